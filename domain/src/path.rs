//! Virtual paths: what a user names inside a sandbox, parsed once.
//!
//! A [`VirtualPath`] is always relative to the sandbox root, whatever the
//! user typed: `/mnt/data/f`, `mnt//data/./f` and `mnt/x/../data/f` are the
//! same path, `mnt/data/f`. The rules, in order:
//!
//! 1. the input must be UTF-8 without control characters (U+0000–U+001F,
//!    U+007F), checked on the whole input, before anything is dropped;
//! 2. it is split on `/`; empty segments (a leading `/`, `//`) and `.` drop;
//! 3. `..` removes the previous segment; a `..` with nothing left to remove
//!    is [`PathError::EscapesSandbox`] under [`Resolution::Strict`] (the
//!    command and the library), and stays at the root under
//!    [`Resolution::Chroot`] (servers, as OpenSSH's `ChrootDirectory`
//!    resolves `/..` to `/`); nothing climbs above the root either way;
//! 4. each name typed is at most [`MAX_SEGMENT_BYTES`] bytes (even one that a
//!    later `..` removes), and the result at most [`MAX_KEY_BYTES`] bytes.
//!
//! Nothing is percent-decoded: `%2e%2e` is a literal three-letter-pair name.
//! A backslash is an ordinary character.

use std::fmt;

use crate::error::{Error, ErrorKind};

/// The longest segment (file or directory name), in bytes, as on common filesystems.
pub const MAX_SEGMENT_BYTES: usize = 255;

/// The longest S3 object key, in bytes.
pub const MAX_KEY_BYTES: usize = 1024;

/// Why a path was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PathError {
    /// The input was not valid UTF-8.
    #[error("path is not valid UTF-8")]
    InvalidUtf8,
    /// The input held a control character.
    #[error(
        "path {path:?} contains the control character U+{code:04X}; control characters are not allowed in names"
    )]
    ControlCharacter {
        /// The input, escaped by Debug formatting.
        path: String,
        /// The offending character's code point.
        code: u32,
    },
    /// A `..` would climb above the sandbox root.
    #[error("path {path:?} escapes the sandbox: `..` goes above the sandbox root")]
    EscapesSandbox {
        /// The input.
        path: String,
    },
    /// A single name is longer than [`MAX_SEGMENT_BYTES`].
    #[error("name {segment:?} is {len} bytes long; the limit is {limit} bytes")]
    SegmentTooLong {
        /// The first 32 characters of the name.
        segment: String,
        /// Its length in bytes.
        len: usize,
        /// The limit.
        limit: usize,
    },
    /// The path or the object key it maps to is longer than [`MAX_KEY_BYTES`].
    #[error(
        "object key for {path:?} would be {len} bytes long; S3 keys are limited to {limit} bytes"
    )]
    KeyTooLong {
        /// The first 64 characters of the path.
        path: String,
        /// The key's length in bytes.
        len: usize,
        /// The limit.
        limit: usize,
    },
    /// A name that cannot be a single path segment (empty, `.`, `..` or holding `/`).
    #[error("{name:?} is not a valid file name")]
    InvalidName {
        /// The name.
        name: String,
    },
    /// The name at the top of a sandbox that holds corral's own data
    /// ([`crate::key::PRIVATE_DIR`]).
    #[error("{name:?} at the top of a sandbox is reserved for the server's own data")]
    Reserved {
        /// The name.
        name: String,
    },
}

impl From<PathError> for Error {
    fn from(e: PathError) -> Self {
        let kind = match &e {
            PathError::EscapesSandbox { .. } => ErrorKind::EscapesSandbox,
            PathError::SegmentTooLong { .. } | PathError::KeyTooLong { .. } => ErrorKind::TooLarge,
            PathError::Reserved { .. } => ErrorKind::PermissionDenied,
            _ => ErrorKind::InvalidInput,
        };
        Error::new(kind, e.to_string())
    }
}

pub(crate) fn truncate_chars(s: &str, n: usize) -> String {
    match s.char_indices().nth(n) {
        Some((i, _)) => format!("{}…", &s[..i]),
        None => s.to_owned(),
    }
}

pub(crate) fn first_control_char(s: &str) -> Option<char> {
    s.chars().find(char::is_ascii_control)
}

/// What a `..` at the root means.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Resolution {
    /// An error: the user asked for something outside the sandbox
    /// ([`PathError::EscapesSandbox`]). The command and the library.
    #[default]
    Strict,
    /// The root itself, as POSIX and a chrooted server resolve `/..`: for
    /// servers, whose clients send `..` from the root (`cd ..`).
    Chroot,
}

/// A normalized path inside a sandbox; the root is the empty path.
///
/// Stored as its segments joined by `/`, without a leading or trailing `/`.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct VirtualPath {
    normalized: String,
}

impl VirtualPath {
    /// The sandbox root.
    pub const ROOT: Self = Self {
        normalized: String::new(),
    };

    /// Parses user input; see the [module docs](self) for the rules.
    pub fn parse(input: &str) -> Result<Self, PathError> {
        Self::parse_with(input, Resolution::Strict)
    }

    /// Parses user input, resolving a `..` at the root as `resolution` says.
    pub fn parse_with(input: &str, resolution: Resolution) -> Result<Self, PathError> {
        if let Some(c) = first_control_char(input) {
            return Err(PathError::ControlCharacter {
                path: input.escape_debug().to_string(),
                code: c as u32,
            });
        }
        let mut segments: Vec<&str> = Vec::new();
        for segment in input.split('/') {
            match segment {
                "" | "." => {}
                ".." => {
                    if segments.pop().is_none() && resolution == Resolution::Strict {
                        return Err(PathError::EscapesSandbox {
                            path: input.to_owned(),
                        });
                    }
                }
                name => {
                    check_segment_len(name)?;
                    segments.push(name);
                }
            }
        }
        let normalized = segments.join("/");
        check_key_len(&normalized, normalized.len())?;
        Ok(Self { normalized })
    }

    /// Parses raw bytes, refusing invalid UTF-8.
    pub fn parse_bytes(input: &[u8]) -> Result<Self, PathError> {
        let s = std::str::from_utf8(input).map_err(|_| PathError::InvalidUtf8)?;
        Self::parse(s)
    }

    /// Builds a path from a string already known to be normalized, checking it.
    /// Used by the listing inverse, where anything irregular is hidden, not fixed.
    pub(crate) fn from_normalized(s: &str) -> Option<Self> {
        if s.is_empty() {
            return Some(Self::ROOT);
        }
        if s.len() > MAX_KEY_BYTES || first_control_char(s).is_some() {
            return None;
        }
        let regular = s
            .split('/')
            .all(|seg| !matches!(seg, "" | "." | "..") && seg.len() <= MAX_SEGMENT_BYTES);
        regular.then(|| Self {
            normalized: s.to_owned(),
        })
    }

    /// The normalized form without a leading `/` (`""` for the root).
    pub fn as_str(&self) -> &str {
        &self.normalized
    }

    /// Whether this is the sandbox root.
    pub fn is_root(&self) -> bool {
        self.normalized.is_empty()
    }

    /// The segments, root first.
    pub fn segments(&self) -> impl DoubleEndedIterator<Item = &str> + '_ {
        self.normalized.split('/').filter(|s| !s.is_empty())
    }

    /// How many segments deep the path is (0 for the root).
    pub fn depth(&self) -> usize {
        self.segments().count()
    }

    /// The last segment, or `None` for the root.
    pub fn file_name(&self) -> Option<&str> {
        self.segments().next_back()
    }

    /// The parent, or `None` for the root.
    pub fn parent(&self) -> Option<Self> {
        if self.is_root() {
            return None;
        }
        let parent = match self.normalized.rfind('/') {
            Some(i) => &self.normalized[..i],
            None => "",
        };
        Some(Self {
            normalized: parent.to_owned(),
        })
    }

    /// Appends one name, which must be a single valid segment.
    pub fn join(&self, name: &str) -> Result<Self, PathError> {
        if matches!(name, "" | "." | "..") || name.contains('/') {
            return Err(PathError::InvalidName {
                name: name.to_owned(),
            });
        }
        if let Some(c) = first_control_char(name) {
            return Err(PathError::ControlCharacter {
                path: name.escape_debug().to_string(),
                code: c as u32,
            });
        }
        check_segment_len(name)?;
        let normalized = if self.is_root() {
            name.to_owned()
        } else {
            format!("{}/{}", self.normalized, name)
        };
        check_key_len(&normalized, normalized.len())?;
        Ok(Self { normalized })
    }

    /// Joins a parsed relative path below this one (both are already normalized,
    /// so only the length can fail).
    pub fn join_path(&self, rest: &VirtualPath) -> Result<Self, PathError> {
        if rest.is_root() {
            return Ok(self.clone());
        }
        if self.is_root() {
            return Ok(rest.clone());
        }
        let normalized = format!("{}/{}", self.normalized, rest.normalized);
        check_key_len(&normalized, normalized.len())?;
        Ok(Self { normalized })
    }

    /// Whether `self` is `ancestor` or lies below it (segment-wise: `ab` is not below `a`).
    pub fn starts_with(&self, ancestor: &VirtualPath) -> bool {
        self.strip_prefix(ancestor).is_some()
    }

    /// The part of `self` below `ancestor`, if `self` lies below it.
    pub fn strip_prefix(&self, ancestor: &VirtualPath) -> Option<VirtualPath> {
        if ancestor.is_root() {
            return Some(self.clone());
        }
        let rest = self.normalized.strip_prefix(&ancestor.normalized)?;
        if rest.is_empty() {
            return Some(Self::ROOT);
        }
        rest.strip_prefix('/').map(|r| Self {
            normalized: r.to_owned(),
        })
    }
}

fn check_segment_len(name: &str) -> Result<(), PathError> {
    if name.len() > MAX_SEGMENT_BYTES {
        return Err(PathError::SegmentTooLong {
            segment: truncate_chars(name, 32),
            len: name.len(),
            limit: MAX_SEGMENT_BYTES,
        });
    }
    Ok(())
}

pub(crate) fn check_key_len(path: &str, key_len: usize) -> Result<(), PathError> {
    if key_len > MAX_KEY_BYTES {
        return Err(PathError::KeyTooLong {
            path: truncate_chars(path, 64),
            len: key_len,
            limit: MAX_KEY_BYTES,
        });
    }
    Ok(())
}

impl fmt::Display for VirtualPath {
    /// Shown as the user sees it: with a leading `/`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "/{}", self.normalized)
    }
}

impl fmt::Debug for VirtualPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "VirtualPath({:?})", format_args!("/{}", self.normalized))
    }
}

impl std::str::FromStr for VirtualPath {
    type Err = PathError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &str) -> String {
        VirtualPath::parse(s).unwrap().as_str().to_owned()
    }

    #[test]
    fn absolute_paths_are_rerooted_under_the_sandbox() {
        assert_eq!(p("/mnt/data/f"), "mnt/data/f");
        assert_eq!(p("mnt/data/f"), "mnt/data/f");
        assert_eq!(p("/"), "");
        assert_eq!(p(""), "");
    }

    #[test]
    fn slashes_collapse_and_dots_drop() {
        assert_eq!(p("//a///b//"), "a/b");
        assert_eq!(p("./a/./b/."), "a/b");
        assert_eq!(p("a/x/../b"), "a/b");
        assert_eq!(p("a/.."), "");
    }

    #[test]
    fn dotdot_at_the_root_is_an_error_not_a_clamp() {
        for input in ["..", "/..", "a/../..", "/../etc/passwd", "a/b/../../../c"] {
            assert!(
                matches!(
                    VirtualPath::parse(input),
                    Err(PathError::EscapesSandbox { .. })
                ),
                "{input}"
            );
        }
        let e: Error = VirtualPath::parse("..").unwrap_err().into();
        assert_eq!(e.kind(), ErrorKind::EscapesSandbox);
    }

    #[test]
    fn chroot_resolution_stays_at_the_root() {
        let c = |s: &str| {
            VirtualPath::parse_with(s, Resolution::Chroot)
                .unwrap()
                .as_str()
                .to_owned()
        };
        assert_eq!(c(".."), "");
        assert_eq!(c("/.."), "");
        assert_eq!(c("/../.."), "");
        assert_eq!(c("/../etc/passwd"), "etc/passwd");
        assert_eq!(c("a/../../b"), "b");
        assert_eq!(c("a/b/../c"), "a/c");
        // The other rules are the same.
        assert!(VirtualPath::parse_with("../\u{0}", Resolution::Chroot).is_err());
        assert!(VirtualPath::parse_with(&"x".repeat(256), Resolution::Chroot).is_err());
    }

    #[test]
    fn no_percent_decoding() {
        assert_eq!(p("%2e%2e/x"), "%2e%2e/x");
        assert_eq!(p("a%2Fb"), "a%2Fb");
    }

    #[test]
    fn control_characters_are_refused_even_in_dropped_segments() {
        for input in ["a\0b", "a/\u{1f}", "\u{7f}", "x\n/..", "tab\there"] {
            assert!(
                matches!(
                    VirtualPath::parse(input),
                    Err(PathError::ControlCharacter { .. })
                ),
                "{input:?}"
            );
        }
        // U+0080 and above are not in the refused range.
        assert_eq!(p("caf\u{e9}/\u{85}"), "caf\u{e9}/\u{85}");
    }

    #[test]
    fn invalid_utf8_is_refused() {
        assert_eq!(
            VirtualPath::parse_bytes(b"a/\xff"),
            Err(PathError::InvalidUtf8)
        );
        assert_eq!(VirtualPath::parse_bytes(b"a/b").unwrap().as_str(), "a/b");
    }

    #[test]
    fn segment_and_key_limits_are_stated() {
        let long = "x".repeat(256);
        let e = VirtualPath::parse(&long).unwrap_err();
        assert!(e.to_string().contains("256 bytes"), "{e}");
        assert!(e.to_string().contains("limit is 255"), "{e}");
        assert!(VirtualPath::parse(&"x".repeat(255)).is_ok());

        let deep = vec!["y".repeat(200); 6].join("/"); // 1205 bytes
        let e = VirtualPath::parse(&deep).unwrap_err();
        assert!(
            matches!(e, PathError::KeyTooLong { limit: 1024, .. }),
            "{e}"
        );
        assert!(e.to_string().contains("1024"), "{e}");
    }

    #[test]
    fn navigation() {
        let path = VirtualPath::parse("a/b/c").unwrap();
        assert_eq!(path.file_name(), Some("c"));
        assert_eq!(path.parent().unwrap().as_str(), "a/b");
        assert_eq!(path.depth(), 3);
        assert_eq!(VirtualPath::ROOT.parent(), None);
        assert_eq!(path.to_string(), "/a/b/c");
        let a = VirtualPath::parse("a").unwrap();
        let ab = VirtualPath::parse("ab").unwrap();
        assert!(path.starts_with(&a));
        assert!(!ab.starts_with(&a));
        assert_eq!(path.strip_prefix(&a).unwrap().as_str(), "b/c");
        assert_eq!(a.join("n").unwrap().as_str(), "a/n");
        assert!(a.join("..").is_err());
        assert!(a.join("x/y").is_err());
        assert!(a.join("").is_err());
    }
}
