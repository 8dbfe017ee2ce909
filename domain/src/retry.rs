//! When to try a failed request again: a schedule of pauses, pure.
//!
//! One schedule type for every retry corral makes of its own (object_store
//! retries its requests itself): signed S3 requests and unusable listing
//! pages ([`Backoff::requests`]), a CreateMultipartUpload whose answer was
//! cut, aborts of multipart uploads ([`Backoff::aborts`]). The loop that
//! sleeps lives with the runtime (`corral_adapters::retry`).

use std::time::Duration;

/// How many times to try again, and the pause before each try.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    /// Tries after the first.
    pub retries: u32,
    /// The pause before the first retry.
    pub first: Duration,
    /// Each pause is this many times the one before.
    pub factor: u32,
    /// No pause is longer.
    pub max: Duration,
}

impl Backoff {
    /// Requests: 200 ms, doubling, at most 6.4 s, `retries` times (the
    /// sandbox's `maxRetries`).
    pub fn requests(retries: u32) -> Self {
        Self {
            retries,
            first: Duration::from_millis(200),
            factor: 2,
            max: Duration::from_millis(6_400),
        }
    }

    /// Aborts of multipart uploads: twice, after 0.5 s and 2 s (each try
    /// with the client's own retries): an upload left pending costs storage
    /// until someone aborts it.
    pub fn aborts() -> Self {
        Self {
            retries: 2,
            first: Duration::from_millis(500),
            factor: 4,
            max: Duration::from_secs(2),
        }
    }

    /// The pause before retry `attempt` (1-based), or `None` when the
    /// retries are spent.
    pub fn pause(&self, attempt: u32) -> Option<Duration> {
        if attempt == 0 || attempt > self.retries {
            return None;
        }
        let factor = self.factor.max(1).saturating_pow(attempt - 1);
        Some(self.first.saturating_mul(factor).min(self.max))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schedules() {
        let r = Backoff::requests(8);
        let ms: Vec<u128> = (1..=9)
            .filter_map(|a| r.pause(a))
            .map(|d| d.as_millis())
            .collect();
        assert_eq!(ms, [200, 400, 800, 1600, 3200, 6400, 6400, 6400]);
        let a = Backoff::aborts();
        assert_eq!(a.pause(1), Some(Duration::from_millis(500)));
        assert_eq!(a.pause(2), Some(Duration::from_secs(2)));
        assert_eq!(a.pause(3), None);
        assert_eq!(Backoff::requests(0).pause(1), None);
        assert_eq!(a.pause(0), None);
        // No overflow however long it runs.
        assert_eq!(
            Backoff::requests(u32::MAX).pause(u32::MAX),
            Some(Duration::from_millis(6_400))
        );
    }
}
