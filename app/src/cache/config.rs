//! Cache settings, from the four flags or the config file's `cache` section.
//!
//! Defaults: 1 GiB in all, 64 MiB per upload and 64 MiB per download. 64 MiB
//! holds eight 8 MiB parts, enough to keep a fast link busy with parts in
//! flight while the next ones fill; 1 GiB then admits sixteen transfers at
//! full window at once, which keeps a few dozen users moving on a small
//! server without more memory than a typical container allows. One user may
//! hold the whole cache unless `maxCloudCachePerUser` says less (the
//! server's default is a quarter of the cache: see [`CacheConfig::per_user`]).

use std::path::PathBuf;
use std::time::Duration;

use corral_domain::parts::{MIN_PART_SIZE, human};
use corral_domain::{Error, ErrorKind};
use serde::Deserialize;

/// How the transfer cache is sized and backed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CacheConfig {
    /// `maxCloudCacheSize`: all transfers together.
    pub total: u64,
    /// `maxCloudCacheUploadSize`: one upload at most.
    pub upload: u64,
    /// `maxCloudCacheDownloadSize`: one download at most.
    pub download: u64,
    /// `cloudCacheFile`: a file on fast local storage used instead of memory.
    pub file: Option<PathBuf>,
    /// How long a transfer waits for room before failing with "cache full".
    pub wait: Duration,
    /// `maxCloudCachePerUser`: the most one user (account) holds at once;
    /// `None`: the whole cache (one user, as with the command).
    pub per_user: Option<u64>,
}

/// One MiB.
const MIB: u64 = 1 << 20;

impl Default for CacheConfig {
    fn default() -> Self {
        Self {
            total: 1 << 30,
            upload: 64 * MIB,
            download: 64 * MIB,
            file: None,
            wait: Duration::from_secs(120),
            per_user: None,
        }
    }
}

fn invalid(message: String) -> Error {
    Error::new(ErrorKind::InvalidInput, message)
}

/// Parses a size: plain bytes, or a number with a unit (`64MiB`, `1GiB`, `500MB`, `1.5G`).
/// Binary units (KiB, MiB, GiB, TiB) are powers of 1024; decimal ones (KB, MB, GB) of 1000.
pub fn parse_size(flag: &str, value: &str) -> Result<u64, Error> {
    let trimmed = value.trim();
    let parsed = trimmed
        .parse::<bytesize::ByteSize>()
        .map_err(|_| invalid(format!("{flag}: {value:?} is not a size; write bytes or a number with a unit, such as 64MiB, 1GiB or 500MB")))?;
    let n = parsed.as_u64();
    // bytesize saturates on overflow; a saturated value is refused, not trusted.
    if n == u64::MAX || n > (1 << 50) {
        return Err(invalid(format!("{flag}: {value:?} is too large")));
    }
    Ok(n)
}

impl CacheConfig {
    /// The most one account holds: `per_user`, or the whole cache.
    pub fn per_account(&self) -> u64 {
        self.per_user.unwrap_or(self.total).min(self.total)
    }

    /// The share per user a server uses when none is set: a quarter of the
    /// cache, but at least one upload's and one download's window, so that
    /// one user can never hold it all and a user's transfer always fits.
    pub fn server_default_per_user(&self) -> u64 {
        (self.total / 4)
            .max(self.upload)
            .max(self.download)
            .min(self.total)
    }

    /// Checks the limits against each other.
    pub fn validate(&self) -> Result<(), Error> {
        if self.total == 0 {
            return Err(invalid(
                "the cache size (maxCloudCacheSize) must be more than 0".to_owned(),
            )
            .with_setting("maxCloudCacheSize"));
        }
        for (what, key, value) in [
            ("per-upload", "maxCloudCacheUploadSize", self.upload),
            ("per-download", "maxCloudCacheDownloadSize", self.download),
        ] {
            if value > self.total {
                return Err(invalid(format!(
                    "the {what} cache ({key}, {}) is larger than the whole cache (maxCloudCacheSize, {}): a transfer cannot reserve more than the whole cache",
                    human(value),
                    human(self.total)
                ))
                .with_setting(key));
            }
        }
        if self.upload < MIN_PART_SIZE {
            return Err(invalid(format!(
                "the per-upload cache (maxCloudCacheUploadSize, {}) is smaller than one multipart part (5 MiB): set it to at least 5MiB",
                human(self.upload)
            ))
            .with_setting("maxCloudCacheUploadSize"));
        }
        if let Some(per) = self.per_user
            && per < MIN_PART_SIZE.min(self.total)
        {
            return Err(invalid(format!(
                "the share per user (maxCloudCachePerUser, {}) is smaller than one multipart part (5 MiB): set it to at least 5MiB",
                human(per)
            ))
            .with_setting("maxCloudCachePerUser"));
        }
        if let Some(per) = self.per_user
            && per > self.total
        {
            return Err(invalid(format!(
                "the share per user (maxCloudCachePerUser, {}) is larger than the whole cache (maxCloudCacheSize, {})",
                human(per),
                human(self.total)
            ))
            .with_setting("maxCloudCachePerUser"));
        }
        if self.download == 0 {
            return Err(invalid(
                "the per-download cache (maxCloudCacheDownloadSize) must be more than 0".to_owned(),
            )
            .with_setting("maxCloudCacheDownloadSize"));
        }
        Ok(())
    }
}

/// The `cache` section of the config file (camelCase, sizes as numbers or strings).
#[derive(Debug, Clone, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CacheSection {
    /// `maxCloudCacheSize`.
    pub max_cloud_cache_size: Option<SizeValue>,
    /// `maxCloudCacheUploadSize`.
    pub max_cloud_cache_upload_size: Option<SizeValue>,
    /// `maxCloudCacheDownloadSize`.
    pub max_cloud_cache_download_size: Option<SizeValue>,
    /// `cloudCacheFile`.
    pub cloud_cache_file: Option<PathBuf>,
    /// `waitSeconds`: how long a transfer waits for room.
    pub wait_seconds: Option<u64>,
    /// `maxCloudCachePerUser`.
    pub max_cloud_cache_per_user: Option<SizeValue>,
}

/// A size written as a number of bytes or a string with a unit.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(untagged)]
pub enum SizeValue {
    /// Plain bytes.
    Bytes(u64),
    /// With a unit (`64MiB`).
    Text(String),
}

impl SizeValue {
    fn resolve(&self, key: &str) -> Result<u64, Error> {
        match self {
            Self::Bytes(n) => Ok(*n),
            Self::Text(s) => parse_size(key, s),
        }
    }
}

impl CacheSection {
    /// Applies the section over `base` (the defaults, or flags applied later win).
    pub fn apply(&self, mut base: CacheConfig) -> Result<CacheConfig, Error> {
        if let Some(v) = &self.max_cloud_cache_size {
            base.total = v.resolve("cache.maxCloudCacheSize")?;
        }
        if let Some(v) = &self.max_cloud_cache_upload_size {
            base.upload = v.resolve("cache.maxCloudCacheUploadSize")?;
        }
        if let Some(v) = &self.max_cloud_cache_download_size {
            base.download = v.resolve("cache.maxCloudCacheDownloadSize")?;
        }
        if let Some(f) = &self.cloud_cache_file {
            base.file = Some(f.clone());
        }
        if let Some(s) = self.wait_seconds {
            base.wait = Duration::from_secs(s);
        }
        if let Some(v) = &self.max_cloud_cache_per_user {
            base.per_user = Some(v.resolve("cache.maxCloudCachePerUser")?);
        }
        Ok(base)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        assert_eq!(parse_size("f", "64MiB").unwrap(), 64 << 20);
        assert_eq!(parse_size("f", "1GiB").unwrap(), 1 << 30);
        assert_eq!(parse_size("f", "500MB").unwrap(), 500_000_000);
        assert_eq!(parse_size("f", "12345").unwrap(), 12345);
        assert_eq!(parse_size("f", " 2 GiB ").unwrap(), 2 << 30);
        for bad in ["", "lots", "-5MB", "5 parsecs", "99999999999999999999EB"] {
            let e = parse_size("--max-cloud-cache-size", bad).unwrap_err();
            assert!(
                e.to_string().contains("--max-cloud-cache-size"),
                "{bad}: {e}"
            );
        }
    }

    #[test]
    fn limits_are_checked_against_each_other() {
        assert!(CacheConfig::default().validate().is_ok());
        let c = CacheConfig {
            upload: 2 << 30,
            ..CacheConfig::default()
        };
        let e = c.validate().unwrap_err();
        assert_eq!(e.setting(), Some("maxCloudCacheUploadSize"));
        let e = e.to_string();
        assert!(e.contains("the per-upload cache (maxCloudCacheUploadSize, 2 GiB) is larger than the whole cache (maxCloudCacheSize, 1 GiB)"), "{e}");
        let c = CacheConfig {
            download: 2 << 30,
            ..CacheConfig::default()
        };
        assert!(
            c.validate()
                .unwrap_err()
                .to_string()
                .contains("maxCloudCacheDownloadSize")
        );
        let c = CacheConfig {
            upload: 4 << 20,
            ..CacheConfig::default()
        };
        let e = c.validate().unwrap_err().to_string();
        assert!(e.contains("smaller than one multipart part (5 MiB)"), "{e}");
    }

    #[test]
    fn section_from_json() {
        let s: CacheSection = serde_json::from_str(
            r#"{"maxCloudCacheSize":"2GiB","maxCloudCacheUploadSize":16777216,"cloudCacheFile":"/fast/cache","waitSeconds":5}"#,
        )
        .unwrap();
        let c = s.apply(CacheConfig::default()).unwrap();
        assert_eq!(
            (c.total, c.upload, c.download),
            (2 << 30, 16 << 20, 64 << 20)
        );
        assert_eq!(c.file.as_deref(), Some(std::path::Path::new("/fast/cache")));
        assert_eq!(c.wait, Duration::from_secs(5));
        let e =
            serde_json::from_str::<CacheSection>(r#"{"maxCloudCacheSise":"1GiB"}"#).unwrap_err();
        assert!(e.to_string().contains("maxCloudCacheSise"), "{e}");
    }
}
