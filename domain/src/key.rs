//! Key mapping: where a sandbox's virtual paths live in a bucket, and back.
//!
//! A [`SandboxRoot`] is the key prefix of one sandbox (`""` for the bucket
//! root, otherwise segments ending in `/`, such as `users/alice/`). A file at
//! virtual path `p` is the object `prefix + p`; a directory may also have a
//! zero-byte *marker* object `prefix + p + "/"`.
//!
//! The inverse, [`SandboxRoot::classify`], is what every listing goes through.
//! It is deliberately strict: a key that is not exactly the image of some
//! virtual path is hidden rather than repaired, and the reason is reported so
//! that a listing can say how many keys it hid. This is defence in depth: a
//! buggy or hostile server that returns keys outside the prefix, or keys
//! such as `a/../b`, cannot make a user see or reach anything outside the
//! sandbox.

use std::fmt;

use crate::path::{MAX_KEY_BYTES, PathError, VirtualPath, check_key_len, first_control_char};

/// A full object key in a bucket (or a relative file path in a File sandbox).
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ObjectKey(String);

impl ObjectKey {
    /// Wraps a raw key as it is stored. No normalization happens here: raw keys
    /// come from a server or a raw client and may be anything.
    pub fn from_raw(key: impl Into<String>) -> Self {
        Self(key.into())
    }

    /// The key as stored.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Whether the key ends in `/`, the shape of a directory marker.
    pub fn is_dir_marker(&self) -> bool {
        self.0.ends_with('/')
    }

    /// Consumes the key, returning the string.
    pub fn into_string(self) -> String {
        self.0
    }
}

impl fmt::Display for ObjectKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for ObjectKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ObjectKey({:?})", self.0)
    }
}

/// The key prefix of one sandbox.
#[derive(Clone, PartialEq, Eq, Hash, Default)]
pub struct SandboxRoot {
    /// `""` or segments each followed by `/`.
    prefix: String,
}

/// Why a key seen in a listing was hidden from the user.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum HiddenReason {
    /// The key does not start with the sandbox prefix.
    OutsidePrefix,
    /// A segment is `.` or `..` (such objects are ignored).
    DotSegment,
    /// A segment is empty (`a//b`).
    EmptySegment,
    /// The key holds a control character.
    ControlCharacter,
    /// A segment is longer than a name may be.
    SegmentTooLong,
    /// The key is longer than an S3 key may be.
    KeyTooLong,
    /// A link or special file of a File sandbox ([`crate::node`]).
    Special,
    /// corral's own data at the top of the sandbox ([`PRIVATE_DIR`]).
    Private,
}

/// The directory at the top of every sandbox where corral keeps its own
/// small documents (a WebDAV server's dead properties): never listed, and
/// no user path reaches it.
pub const PRIVATE_DIR: &str = ".corral";

/// Refuses a path inside [`PRIVATE_DIR`].
fn check_not_private(path: &VirtualPath) -> Result<(), PathError> {
    match path.segments().next() {
        Some(PRIVATE_DIR) => Err(PathError::Reserved {
            name: PRIVATE_DIR.to_owned(),
        }),
        _ => Ok(()),
    }
}

impl HiddenReason {
    /// A short explanation for logs.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::OutsidePrefix => "outside the sandbox prefix",
            Self::DotSegment => "a segment named `.` or `..`",
            Self::EmptySegment => "an empty segment",
            Self::ControlCharacter => "a control character",
            Self::SegmentTooLong => "a segment over 255 bytes",
            Self::KeyTooLong => "a key over 1024 bytes",
            Self::Special => "a link or special file",
            Self::Private => "corral's own data",
        }
    }
}

/// What a raw key is, seen from inside a sandbox.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeyClass {
    /// A file at this path.
    File(VirtualPath),
    /// A directory at this path (a marker `p/`, or a common prefix in a delimited listing).
    Directory(VirtualPath),
    /// The marker of the sandbox root itself: not an entry.
    RootMarker,
    /// Not visible to the user, and why.
    Hidden(HiddenReason),
}

impl SandboxRoot {
    /// The bucket root: every key of the bucket is inside.
    pub const BUCKET_ROOT: Self = Self {
        prefix: String::new(),
    };

    /// Builds the root from the `path` option: missing, `""` or `/` is the bucket
    /// root; `/a/b`, `a/b` and `a/b/` are all the prefix `a/b/`.
    ///
    /// Unlike a user's path, a configured prefix may not contain `.` or `..`
    /// segments: an administrator's typo should not silently move a sandbox.
    pub fn new(path: &str) -> Result<Self, PathError> {
        if let Some(c) = first_control_char(path) {
            return Err(PathError::ControlCharacter {
                path: path.escape_debug().to_string(),
                code: c as u32,
            });
        }
        let mut prefix = String::new();
        for segment in path.split('/').filter(|s| !s.is_empty()) {
            if matches!(segment, "." | "..") {
                return Err(PathError::InvalidName {
                    name: segment.to_owned(),
                });
            }
            // Reuse the path rules for the per-segment length check.
            VirtualPath::parse(segment)?;
            prefix.push_str(segment);
            prefix.push('/');
        }
        check_key_len(path, prefix.len())?;
        Ok(Self { prefix })
    }

    /// The prefix itself (`""` or ending in `/`).
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// Whether this is the whole bucket.
    pub fn is_bucket_root(&self) -> bool {
        self.prefix.is_empty()
    }

    /// A sandbox nested below this one (used for mounts sharing a bucket and for tests).
    pub fn child(&self, path: &VirtualPath) -> Result<Self, PathError> {
        Self::new(&format!("{}{}", self.prefix, path.as_str()))
    }

    /// The object key of a file at `path`. The root has no file key.
    pub fn key_for(&self, path: &VirtualPath) -> Result<ObjectKey, PathError> {
        if path.is_root() {
            return Err(PathError::InvalidName {
                name: "/".to_owned(),
            });
        }
        check_not_private(path)?;
        let key = format!("{}{}", self.prefix, path.as_str());
        check_key_len(path.as_str(), key.len())?;
        Ok(ObjectKey(key))
    }

    /// The key of corral's own document `name` in this sandbox
    /// (`prefix + ".corral/" + name`), which no user path reaches.
    pub fn private_key(&self, name: &str) -> Result<ObjectKey, PathError> {
        let name = VirtualPath::parse(name)?;
        let key = format!("{}{PRIVATE_DIR}/{}", self.prefix, name.as_str());
        check_key_len(name.as_str(), key.len())?;
        Ok(ObjectKey(key))
    }

    /// The key of the directory marker of `path` (`prefix + path + "/"`).
    /// For the root this is the prefix itself, or `None` at the bucket root.
    pub fn dir_marker_for(&self, path: &VirtualPath) -> Result<Option<ObjectKey>, PathError> {
        if path.is_root() {
            return Ok((!self.prefix.is_empty()).then(|| ObjectKey(self.prefix.clone())));
        }
        check_not_private(path)?;
        let key = format!("{}{}/", self.prefix, path.as_str());
        check_key_len(path.as_str(), key.len())?;
        Ok(Some(ObjectKey(key)))
    }

    /// The prefix to list for the children of directory `path`
    /// (`prefix + path + "/"`, or the sandbox prefix for the root).
    pub fn list_prefix_for(&self, path: &VirtualPath) -> Result<ObjectKey, PathError> {
        Ok(self
            .dir_marker_for(path)?
            .unwrap_or_else(|| ObjectKey(String::new())))
    }

    /// Classifies a raw key from a listing; see the [module docs](self).
    pub fn classify(&self, key: &str) -> KeyClass {
        let Some(rest) = key.strip_prefix(self.prefix.as_str()) else {
            return KeyClass::Hidden(HiddenReason::OutsidePrefix);
        };
        if rest.is_empty() {
            return KeyClass::RootMarker;
        }
        if key.len() > MAX_KEY_BYTES {
            return KeyClass::Hidden(HiddenReason::KeyTooLong);
        }
        if first_control_char(rest).is_some() {
            return KeyClass::Hidden(HiddenReason::ControlCharacter);
        }
        let (body, is_dir) = match rest.strip_suffix('/') {
            Some(body) => (body, true),
            None => (rest, false),
        };
        if body.split('/').next() == Some(PRIVATE_DIR) {
            return KeyClass::Hidden(HiddenReason::Private);
        }
        for segment in body.split('/') {
            match segment {
                "" => return KeyClass::Hidden(HiddenReason::EmptySegment),
                "." | ".." => return KeyClass::Hidden(HiddenReason::DotSegment),
                s if s.len() > crate::path::MAX_SEGMENT_BYTES => {
                    return KeyClass::Hidden(HiddenReason::SegmentTooLong);
                }
                _ => {}
            }
        }
        match VirtualPath::from_normalized(body) {
            Some(path) if is_dir => KeyClass::Directory(path),
            Some(path) => KeyClass::File(path),
            // Unreachable after the checks above; hiding is the safe answer anyway.
            None => KeyClass::Hidden(HiddenReason::KeyTooLong),
        }
    }

    /// The virtual path of a raw key, or `None` if the key is hidden or the root marker.
    pub fn entry_for(&self, key: &str) -> Option<VirtualPath> {
        match self.classify(key) {
            KeyClass::File(p) | KeyClass::Directory(p) => Some(p),
            KeyClass::RootMarker | KeyClass::Hidden(_) => None,
        }
    }
}

impl fmt::Debug for SandboxRoot {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SandboxRoot({:?})", self.prefix)
    }
}

impl fmt::Display for SandboxRoot {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.prefix.is_empty() {
            f.write_str("(bucket root)")
        } else {
            f.write_str(&self.prefix)
        }
    }
}

/// Counts what a listing hid, so that it can be reported instead of silently dropped.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HiddenCount {
    /// Keys hidden, in total.
    pub total: u64,
    /// Of which outside the prefix: a server bug or attack, worth a warning.
    pub outside_prefix: u64,
    /// The first few hidden keys, for a log line (escaped, truncated).
    pub examples: Vec<String>,
    /// Links and special files of a File sandbox ([`crate::node`]), hidden
    /// too but counted apart: they are not a server's fault.
    pub special: u64,
}

impl HiddenCount {
    const MAX_EXAMPLES: usize = 3;

    /// Records a link or special file.
    pub fn special(&mut self) {
        self.special += 1;
    }

    /// Classifies `key` and records it if hidden; returns the class.
    pub fn classify(&mut self, root: &SandboxRoot, key: &str) -> KeyClass {
        let class = root.classify(key);
        if let KeyClass::Hidden(reason) = class {
            self.total += 1;
            if reason == HiddenReason::OutsidePrefix {
                self.outside_prefix += 1;
            }
            if self.examples.len() < Self::MAX_EXAMPLES {
                self.examples.push(format!(
                    "{:?} ({})",
                    crate::path::truncate_chars(key, 80),
                    reason.as_str()
                ));
            }
        }
        class
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vp(s: &str) -> VirtualPath {
        VirtualPath::parse(s).unwrap()
    }

    #[test]
    fn prefix_forms() {
        for (input, prefix) in [
            ("", ""),
            ("/", ""),
            ("//", ""),
            ("/a/b", "a/b/"),
            ("a/b/", "a/b/"),
            ("a//b", "a/b/"),
        ] {
            assert_eq!(SandboxRoot::new(input).unwrap().prefix(), prefix, "{input}");
        }
        assert!(SandboxRoot::new("a/../b").is_err());
        assert!(SandboxRoot::new("a/./b").is_err());
        assert!(SandboxRoot::new("a\0").is_err());
    }

    #[test]
    fn keys_and_markers() {
        let root = SandboxRoot::new("/users/alice").unwrap();
        assert_eq!(
            root.key_for(&vp("/d/f.txt")).unwrap().as_str(),
            "users/alice/d/f.txt"
        );
        assert_eq!(
            root.dir_marker_for(&vp("/d")).unwrap().unwrap().as_str(),
            "users/alice/d/"
        );
        assert_eq!(
            root.dir_marker_for(&VirtualPath::ROOT)
                .unwrap()
                .unwrap()
                .as_str(),
            "users/alice/"
        );
        assert_eq!(
            SandboxRoot::BUCKET_ROOT
                .dir_marker_for(&VirtualPath::ROOT)
                .unwrap(),
            None
        );
        assert!(root.key_for(&VirtualPath::ROOT).is_err());
        assert_eq!(
            root.list_prefix_for(&VirtualPath::ROOT).unwrap().as_str(),
            "users/alice/"
        );
        assert_eq!(
            SandboxRoot::BUCKET_ROOT
                .list_prefix_for(&VirtualPath::ROOT)
                .unwrap()
                .as_str(),
            ""
        );
    }

    #[test]
    fn key_length_counts_the_prefix() {
        let root = SandboxRoot::new(&"p".repeat(250)).unwrap(); // 251 bytes
        let path = vp(&vec!["n".repeat(200); 4].join("/")); // 803 bytes: fine alone
        let e = root.key_for(&path).unwrap_err();
        assert!(
            matches!(
                e,
                PathError::KeyTooLong {
                    len: 1054,
                    limit: 1024,
                    ..
                }
            ),
            "{e}"
        );
        assert!(e.to_string().contains("1024"));
        let ok = vp(&vec!["n".repeat(200); 3].join("/"));
        assert!(root.key_for(&ok).is_ok());
    }

    #[test]
    fn classify_hides_what_is_not_a_path() {
        let root = SandboxRoot::new("u/a").unwrap();
        assert_eq!(root.classify("u/a/x"), KeyClass::File(vp("x")));
        assert_eq!(root.classify("u/a/d/"), KeyClass::Directory(vp("d")));
        assert_eq!(root.classify("u/a/"), KeyClass::RootMarker);
        for (key, reason) in [
            ("u/b/x", HiddenReason::OutsidePrefix),
            ("u/ab/x", HiddenReason::OutsidePrefix),
            ("u/a", HiddenReason::OutsidePrefix),
            ("u/a/.", HiddenReason::DotSegment),
            ("u/a/..", HiddenReason::DotSegment),
            ("u/a/../b/x", HiddenReason::DotSegment),
            ("u/a/d/./x", HiddenReason::DotSegment),
            ("u/a//x", HiddenReason::EmptySegment),
            ("u/a/d//", HiddenReason::EmptySegment),
            ("u/a/x\0y", HiddenReason::ControlCharacter),
            ("u/a/x\ny", HiddenReason::ControlCharacter),
        ] {
            assert_eq!(root.classify(key), KeyClass::Hidden(reason), "{key:?}");
        }
        let long = format!("u/a/{}", "z".repeat(256));
        assert_eq!(
            root.classify(&long),
            KeyClass::Hidden(HiddenReason::SegmentTooLong)
        );
        // Found by the property test: a server may return a key longer than S3 allows.
        let too_long = format!("u/a/{}", vec!["z".repeat(200); 6].join("/"));
        assert_eq!(
            root.classify(&too_long),
            KeyClass::Hidden(HiddenReason::KeyTooLong)
        );
    }

    #[test]
    fn hidden_count_reports() {
        let root = SandboxRoot::new("u/a").unwrap();
        let mut hidden = HiddenCount::default();
        for key in ["u/a/ok", "u/b/no", "u/a/..", "u/a/.", "u/a//x", "u/a/"] {
            hidden.classify(&root, key);
        }
        assert_eq!(hidden.total, 4);
        assert_eq!(hidden.outside_prefix, 1);
        assert_eq!(hidden.examples.len(), 3);
        assert!(hidden.examples[0].contains("outside the sandbox prefix"));
    }

    #[test]
    fn bucket_root_round_trip() {
        let root = SandboxRoot::BUCKET_ROOT;
        let key = root.key_for(&vp("a b/+%/\u{1F600}")).unwrap();
        assert_eq!(root.entry_for(key.as_str()), Some(vp("a b/+%/\u{1F600}")));
    }
}

#[cfg(test)]
mod private_tests {
    use super::*;

    fn vp(s: &str) -> VirtualPath {
        VirtualPath::parse(s).expect("path")
    }

    #[test]
    fn the_private_directory_is_hidden_and_unreachable() {
        let root = SandboxRoot::new("users/alice").expect("root");
        for path in ["/.corral", "/.corral/props.json", "/.corral/x/y"] {
            assert!(
                matches!(root.key_for(&vp(path)), Err(PathError::Reserved { .. })),
                "{path}"
            );
            assert!(root.dir_marker_for(&vp(path)).is_err(), "{path}");
        }
        for key in ["users/alice/.corral/", "users/alice/.corral/props.json"] {
            assert_eq!(
                root.classify(key),
                KeyClass::Hidden(HiddenReason::Private),
                "{key}"
            );
        }
        // Only at the top: a `.corral` lower down is an ordinary name.
        assert!(root.key_for(&vp("/d/.corral")).is_ok());
        assert_eq!(
            root.classify("users/alice/d/.corral"),
            KeyClass::File(vp("/d/.corral"))
        );
        assert_eq!(
            root.private_key("props.json").expect("key").as_str(),
            "users/alice/.corral/props.json"
        );
        assert!(root.private_key("../x").is_err());
        let e: crate::Error = PathError::Reserved {
            name: PRIVATE_DIR.to_owned(),
        }
        .into();
        assert_eq!(e.kind(), crate::ErrorKind::PermissionDenied);
    }
}
