//! Size limits and multipart part plans.
//!
//! S3 multipart rules: at most 10,000 parts, each 5 MiB to 5 GiB except the
//! last. corral adds two of its own: parts are all the same size except the
//! last (several S3-compatible servers reject unequal non-final parts, and
//! equal parts make resume a matter of part numbers), and a part must fit the
//! per-transfer upload cache, because a part is staged whole before it is sent.
//!
//! For a stream of unknown size the part size is fixed up front at half the
//! per-transfer upload cache, so a bigger cache allows a longer stream.
//!
//! For a known size, the part size is the default (8 MiB) unless the file
//! needs bigger parts to stay within 10,000, in which case it is the smallest
//! multiple of 1 MiB that fits. A file no larger than one part is one PUT.

use std::ops::Range;

use crate::error::{Error, ErrorKind};

/// One mebibyte.
pub const MIB: u64 = 1 << 20;
/// The smallest part S3 accepts (except the last).
pub const MIN_PART_SIZE: u64 = 5 * MIB;
/// The largest part S3 accepts.
pub const MAX_PART_SIZE: u64 = 5 << 30;
/// The most parts an upload may have.
pub const MAX_PARTS: u64 = 10_000;
/// The part size used unless a file needs bigger parts.
pub const DEFAULT_PART_SIZE: u64 = 8 * MIB;
/// The largest object S3's CopyObject copies in one request (5 GiB).
pub const MAX_COPY_OBJECT_SIZE: u64 = 5 << 30;
/// An S3 sandbox accepts files strictly smaller than this (1 TiB).
pub const S3_MAX_FILE_SIZE: u64 = 1 << 40;

/// Why a size cannot be transferred.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SizeError {
    /// The file is too large for the sandbox.
    #[error("file is {size} bytes; this {backend} sandbox accepts files smaller than {limit} bytes ({})", human(*limit))]
    FileTooLarge {
        /// The file's size.
        size: u64,
        /// The exclusive limit.
        limit: u64,
        /// The backend's name.
        backend: &'static str,
    },
    /// The per-transfer upload cache cannot hold a part big enough.
    #[error("a {} file needs parts of at least {} to stay within 10,000 parts, but the per-transfer upload cache is {}: raise the per-upload cache (maxCloudCacheUploadSize) to at least {}", human(*size), human(*needed), human(*cache), human(*needed))]
    CacheTooSmallForFile {
        /// The file's size.
        size: u64,
        /// The smallest part size (and so upload cache) that fits.
        needed: u64,
        /// The configured per-transfer upload cache.
        cache: u64,
    },
    /// The per-transfer upload cache is smaller than the smallest part.
    #[error("the per-transfer upload cache is {}, smaller than one 5 MiB part: raise the per-upload cache (maxCloudCacheUploadSize) to at least 5MiB", human(*cache))]
    CacheBelowMinimumPart {
        /// The configured per-transfer upload cache.
        cache: u64,
    },
    /// A recorded part size cannot carry this file (a corrupt or foreign journal).
    #[error(
        "a part size of {part_size} bytes cannot carry a file of {size} bytes within S3's limits"
    )]
    InvalidPartSize {
        /// The file's size.
        size: u64,
        /// The part size.
        part_size: u64,
    },
    /// A stream of unknown size reached part 10,001.
    #[error("the upload reached 10,000 parts of {} ({} in all) and has more data: raise the per-upload cache (maxCloudCacheUploadSize; each MiB of part size allows 10,000 MiB of file)", human(*part_size), human(*part_size * MAX_PARTS))]
    TooManyParts {
        /// The part size in use.
        part_size: u64,
    },
}

impl From<SizeError> for Error {
    fn from(e: SizeError) -> Self {
        let kind = match e {
            SizeError::CacheBelowMinimumPart { .. } => ErrorKind::InvalidInput,
            _ => ErrorKind::TooLarge,
        };
        let setting = match e {
            SizeError::CacheTooSmallForFile { .. }
            | SizeError::CacheBelowMinimumPart { .. }
            | SizeError::TooManyParts { .. } => Some("maxCloudCacheUploadSize"),
            _ => None,
        };
        let e2 = Error::new(kind, e.to_string());
        match setting {
            Some(s) => e2.with_setting(s),
            None => e2,
        }
    }
}

/// A size in binary units, for messages (`64 MiB`, `1 TiB`, `12345 bytes`).
pub fn human(bytes: u64) -> String {
    const UNITS: [(&str, u64); 4] = [
        ("TiB", 1 << 40),
        ("GiB", 1 << 30),
        ("MiB", 1 << 20),
        ("KiB", 1 << 10),
    ];
    for (name, unit) in UNITS {
        if bytes >= unit {
            return if bytes.is_multiple_of(unit) {
                format!("{} {name}", bytes / unit)
            } else {
                format!("{:.1} {name}", bytes as f64 / unit as f64)
            };
        }
    }
    format!("{bytes} bytes")
}

/// Checks a file's size against a backend's limit (files must be smaller
/// than `limit`, if any) before any byte moves
/// ([`crate::Capabilities::check_file_size`] asks with a backend's).
pub fn check_file_size(
    size: u64,
    limit: Option<u64>,
    backend: &'static str,
) -> Result<(), SizeError> {
    match limit {
        Some(limit) if size >= limit => Err(SizeError::FileTooLarge {
            size,
            limit,
            backend,
        }),
        _ => Ok(()),
    }
}

/// The largest part size (a multiple of 1 MiB, at most 5 GiB) the cache can hold.
fn cache_cap(upload_cache: u64) -> Result<u64, SizeError> {
    let cap = (upload_cache / MIB * MIB).min(MAX_PART_SIZE);
    if cap < MIN_PART_SIZE {
        return Err(SizeError::CacheBelowMinimumPart {
            cache: upload_cache,
        });
    }
    Ok(cap)
}

/// How a file of known size is uploaded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PartPlan {
    size: u64,
    part_size: u64,
    parts: u64,
}

impl PartPlan {
    /// Plans the upload of `size` bytes with `upload_cache` bytes of per-transfer cache.
    pub fn for_size(size: u64, upload_cache: u64) -> Result<Self, SizeError> {
        let cap = cache_cap(upload_cache)?;
        let preferred = DEFAULT_PART_SIZE.min(cap);
        let needed = size.div_ceil(MAX_PARTS).div_ceil(MIB) * MIB;
        let part_size = preferred.max(needed);
        if part_size > cap {
            return Err(SizeError::CacheTooSmallForFile {
                size,
                needed: part_size,
                cache: upload_cache,
            });
        }
        let parts = size.div_ceil(part_size).max(1);
        Ok(Self {
            size,
            part_size,
            parts,
        })
    }

    /// The plan of an upload that already started with `part_size` (a resumed
    /// upload keeps its part size, whatever the cache allows today).
    pub fn with_part_size(size: u64, part_size: u64) -> Result<Self, SizeError> {
        if !(MIN_PART_SIZE..=MAX_PART_SIZE).contains(&part_size)
            || size.div_ceil(part_size) > MAX_PARTS
        {
            return Err(SizeError::InvalidPartSize { size, part_size });
        }
        Ok(Self {
            size,
            part_size,
            parts: size.div_ceil(part_size).max(1),
        })
    }

    /// The file's size.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// The size of every part but the last.
    pub fn part_size(&self) -> u64 {
        self.part_size
    }

    /// The number of parts (1 for a single PUT).
    pub fn parts(&self) -> u64 {
        self.parts
    }

    /// Whether the file goes as one PUT rather than a multipart upload.
    pub fn is_single_put(&self) -> bool {
        self.size <= self.part_size
    }

    /// The byte range of part `number` (1-based), or `None` past the end.
    pub fn part_range(&self, number: u64) -> Option<Range<u64>> {
        if number == 0 || number > self.parts {
            return None;
        }
        let start = (number - 1) * self.part_size;
        Some(start..(start + self.part_size).min(self.size))
    }

    /// Every part's number and range, in order.
    pub fn iter(&self) -> impl Iterator<Item = (u64, Range<u64>)> + '_ {
        (1..=self.parts).filter_map(|n| self.part_range(n).map(|r| (n, r)))
    }
}

/// How a stream of unknown size is uploaded: fixed parts, checked as they come.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StreamingPlan {
    part_size: u64,
}

impl StreamingPlan {
    /// Parts of half the per-transfer upload cache (so two can be in flight),
    /// at least 5 MiB: the size cannot grow once the stream has started, so a
    /// larger cache is what allows a longer stream.
    pub fn new(upload_cache: u64) -> Result<Self, SizeError> {
        let cap = cache_cap(upload_cache)?;
        Ok(Self {
            part_size: (upload_cache / 2 / MIB * MIB).clamp(MIN_PART_SIZE, cap),
        })
    }

    /// The part size.
    pub fn part_size(&self) -> u64 {
        self.part_size
    }

    /// The plan of a stream that already started with `part_size` (an upload
    /// kept after a dropped connection, continued).
    pub fn with_part_size(part_size: u64) -> Result<Self, SizeError> {
        if !(MIN_PART_SIZE..=MAX_PART_SIZE).contains(&part_size) {
            return Err(SizeError::InvalidPartSize { size: 0, part_size });
        }
        Ok(Self { part_size })
    }

    /// Fails when part `number` (1-based) would be past the 10,000-part limit.
    pub fn check_part(&self, number: u64) -> Result<(), SizeError> {
        if number > MAX_PARTS {
            return Err(SizeError::TooManyParts {
                part_size: self.part_size,
            });
        }
        Ok(())
    }
}

/// Objects at least this large are copied on the server in parts copied in
/// parallel (UploadPartCopy) rather than by one CopyObject, which copies at
/// the pace of one request and stops at 5 GiB.
pub const PART_COPY_MIN_SIZE: u64 = 256 * MIB;

/// The part size of a copy on the server: large parts (nothing passes
/// through the process, so the cache does not bound them), enough of them
/// to copy in parallel, within the 10,000-part limit.
pub const COPY_PART_SIZE: u64 = 128 * MIB;

impl PartPlan {
    /// Plans the server-side copy of an object of `size` bytes in parts.
    pub fn for_copy(size: u64) -> Result<Self, SizeError> {
        let needed = size.div_ceil(MAX_PARTS).div_ceil(MIB) * MIB;
        Self::with_part_size(size, COPY_PART_SIZE.max(needed))
    }
}

/// What of a stored upload can be continued: the run of parts 1, 2, … of
/// one size (the first part's), given as `(number, size)` in any order.
/// A part of another size, or a missing number, ends the run; what comes
/// after it would be sent again. `None` when not even part 1 is usable.
/// Returns the part size and how many parts the run holds.
pub fn continuable(parts: &[(u32, u64)]) -> Option<(u64, u32)> {
    let mut sorted = parts.to_vec();
    sorted.sort_unstable();
    let (first, size) = *sorted.first()?;
    if first != 1 || !(MIN_PART_SIZE..=MAX_PART_SIZE).contains(&size) {
        return None;
    }
    let run = sorted
        .iter()
        .enumerate()
        .take_while(|(i, (n, s))| *n as usize == i + 1 && *s == size)
        .count();
    Some((size, run as u32))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::capability::Capabilities;

    const GIB: u64 = 1 << 30;

    #[test]
    fn copies_in_parts_cover_the_object() {
        let plan = PartPlan::for_copy(GIB).unwrap();
        assert_eq!((plan.part_size(), plan.parts()), (COPY_PART_SIZE, 8));
        let plan = PartPlan::for_copy(5 * GIB + 1).unwrap();
        assert_eq!(plan.parts(), 41);
        assert_eq!(plan.part_range(41), Some(5 * GIB..5 * GIB + 1));
        // Past 1.25 TiB the parts grow to stay within 10,000.
        let plan = PartPlan::for_copy(2 << 40).unwrap();
        assert!(plan.parts() <= MAX_PARTS, "{plan:?}");
        assert!(plan.part_size() > COPY_PART_SIZE);
    }

    #[test]
    fn one_tib_is_refused_one_byte_less_is_not() {
        let caps = Capabilities::s3();
        assert!(caps.check_file_size((1 << 40) - 1).is_ok());
        let e = caps.check_file_size(1 << 40).unwrap_err();
        assert!(
            e.to_string()
                .contains("smaller than 1099511627776 bytes (1 TiB)"),
            "{e}"
        );
        assert_eq!(Error::from(e).kind(), ErrorKind::TooLarge);
        assert!(Capabilities::file().check_file_size(u64::MAX).is_ok());
    }

    #[test]
    fn small_files_are_one_put() {
        for size in [0, 1, DEFAULT_PART_SIZE] {
            let plan = PartPlan::for_size(size, 64 * MIB).unwrap();
            assert!(plan.is_single_put(), "{size}");
            assert_eq!(plan.parts(), 1);
            assert_eq!(plan.part_range(1), Some(0..size));
        }
        assert!(
            !PartPlan::for_size(DEFAULT_PART_SIZE + 1, 64 * MIB)
                .unwrap()
                .is_single_put()
        );
    }

    #[test]
    fn default_part_size_until_ten_thousand_parts() {
        let plan = PartPlan::for_size(GIB, 64 * MIB).unwrap();
        assert_eq!((plan.part_size(), plan.parts()), (8 * MIB, 128));
        let plan = PartPlan::for_size(10_000 * 8 * MIB, 64 * MIB).unwrap();
        assert_eq!((plan.part_size(), plan.parts()), (8 * MIB, 10_000));
        let plan = PartPlan::for_size(10_000 * 8 * MIB + 1, 64 * MIB).unwrap();
        assert_eq!((plan.part_size(), plan.parts()), (9 * MIB, 8889));
    }

    #[test]
    fn largest_file_needs_105_mib_parts() {
        let size = (1 << 40) - 1;
        let e = PartPlan::for_size(size, 64 * MIB).unwrap_err();
        assert_eq!(
            e,
            SizeError::CacheTooSmallForFile {
                size,
                needed: 105 * MIB,
                cache: 64 * MIB
            }
        );
        assert!(e.to_string().contains("at least 105 MiB"), "{e}");
        let plan = PartPlan::for_size(size, 105 * MIB).unwrap();
        assert_eq!(plan.part_size(), 105 * MIB);
        assert!(plan.parts() <= MAX_PARTS);
    }

    #[test]
    fn small_cache_means_small_parts() {
        let plan = PartPlan::for_size(GIB, 5 * MIB + 1000).unwrap();
        assert_eq!(plan.part_size(), 5 * MIB);
        let e = PartPlan::for_size(GIB, 4 * MIB).unwrap_err();
        assert!(matches!(e, SizeError::CacheBelowMinimumPart { .. }));
        assert!(e.to_string().contains("at least 5MiB"));
    }

    #[test]
    fn ranges_cover_the_file_exactly() {
        let size = 3 * 8 * MIB + 12345;
        let plan = PartPlan::for_size(size, 64 * MIB).unwrap();
        let ranges: Vec<_> = plan.iter().collect();
        assert_eq!(ranges.len(), 4);
        assert_eq!(ranges[0].1, 0..8 * MIB);
        assert_eq!(ranges[3].1, 24 * MIB..size);
        assert!(ranges.windows(2).all(|w| w[0].1.end == w[1].1.start));
        assert_eq!(plan.part_range(5), None);
        assert_eq!(plan.part_range(0), None);
    }

    #[test]
    fn streaming_fails_at_part_10001_with_advice() {
        let plan = StreamingPlan::new(64 * MIB).unwrap();
        assert!(plan.check_part(10_000).is_ok());
        let e = plan.check_part(10_001).unwrap_err();
        assert!(e.to_string().contains("maxCloudCacheUploadSize"), "{e}");
        assert_eq!(plan.part_size(), 32 * MIB);
        assert_eq!(StreamingPlan::new(6 * MIB).unwrap().part_size(), 5 * MIB);
        assert_eq!(StreamingPlan::new(1 << 30).unwrap().part_size(), 512 * MIB);
    }

    #[test]
    fn human_sizes() {
        assert_eq!(human(64 * MIB), "64 MiB");
        assert_eq!(human(1 << 40), "1 TiB");
        assert_eq!(human(1536), "1.5 KiB");
        assert_eq!(human(10), "10 bytes");
    }

    #[test]
    fn the_run_of_equal_parts_from_one_is_what_continues() {
        const P: u64 = 8 * MIB;
        assert_eq!(continuable(&[(2, P), (1, P), (3, P)]), Some((P, 3)));
        // A shorter part (the tail of a stream) ends the run.
        assert_eq!(continuable(&[(1, P), (2, P), (3, MIB)]), Some((P, 2)));
        // A gap ends it too.
        assert_eq!(continuable(&[(1, P), (3, P)]), Some((P, 1)));
        assert_eq!(continuable(&[(2, P)]), None);
        assert_eq!(continuable(&[]), None);
        // A first part below S3's minimum is no plan's.
        assert_eq!(continuable(&[(1, MIB)]), None);
    }
}
