//! What a backend can do, declared rather than discovered by failing.
//!
//! The sandbox service and the conformance suite read these flags: a case
//! whose capability is absent is reported as unsupported, not failed, and the
//! service picks the right strategy (a rename is copy-then-delete where it is
//! not atomic). Flags can be overridden per endpoint in configuration, so a
//! quirky S3-compatible server is described, not special-cased in code.

use crate::overwrite::{OverwriteDecision, OverwriteMode, decide};
use crate::parts::{S3_MAX_FILE_SIZE, SizeError, check_file_size};

/// A backend's declared capabilities.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Capabilities {
    /// A short name for messages (`S3`, `File`, `Memory`).
    pub name: &'static str,
    /// Overwrite modes honoured, as a bit set indexed by mode number.
    pub overwrite_modes: u8,
    /// The mode that applies when none is requested or the request is ignored.
    pub default_overwrite: OverwriteMode,
    /// Files must be strictly smaller than this many bytes, if limited.
    pub max_file_size: Option<u64>,
    /// Multipart uploads (create, upload part, complete, abort).
    pub multipart: bool,
    /// Listing pending multipart uploads and their parts (File and Memory:
    /// the uploads of this process).
    pub list_pending_uploads: bool,
    /// An interrupted upload can continue where it stopped, in another
    /// process (its state is the server's).
    pub resume: bool,
    /// Rename is atomic (otherwise copy then delete).
    pub atomic_rename: bool,
    /// Copy happens on the server, without moving the bytes through corral.
    pub server_side_copy: bool,
    /// Create-if-absent (`If-None-Match: *`) is enforced.
    pub conditional_create: bool,
    /// Directories exist only as prefixes or zero-byte `dir/` markers.
    pub directory_markers: bool,
    /// A part of a multipart upload can be copied from an existing object
    /// on the server ([`crate::ObjectStorage::upload_part_copy`]).
    pub part_copy: bool,
    /// A modification time set by a client is kept
    /// ([`crate::ObjectStorage::set_modified`]).
    pub set_modified: bool,
}

impl Capabilities {
    /// An S3 bucket.
    pub fn s3() -> Self {
        Self {
            name: "S3",
            overwrite_modes: 1 << OverwriteMode::InPlaceAlways.number(),
            default_overwrite: OverwriteMode::InPlaceAlways,
            max_file_size: Some(S3_MAX_FILE_SIZE),
            multipart: true,
            list_pending_uploads: true,
            resume: true,
            atomic_rename: false,
            server_side_copy: true,
            conditional_create: true,
            directory_markers: true,
            part_copy: true,
            set_modified: true,
        }
    }

    /// A local directory.
    pub fn file() -> Self {
        Self {
            name: "File",
            overwrite_modes: 0b11_1111,
            default_overwrite: OverwriteMode::InPlaceAlways,
            max_file_size: None,
            multipart: true,
            list_pending_uploads: true,
            resume: false,
            atomic_rename: true,
            server_side_copy: true,
            conditional_create: true,
            directory_markers: false,
            part_copy: true,
            set_modified: true,
        }
    }

    /// The in-memory store. It stores objects like S3 does, so it follows S3's rules.
    pub fn memory() -> Self {
        Self {
            name: "Memory",
            list_pending_uploads: true,
            resume: false,
            part_copy: false,
            set_modified: false,
            ..Self::s3()
        }
    }

    /// Whether `mode` is honoured.
    pub fn honours(&self, mode: OverwriteMode) -> bool {
        self.overwrite_modes & (1 << mode.number()) != 0
    }

    /// The effective overwrite mode when `requested` is asked of this backend
    /// ([`crate::overwrite::decide`]).
    pub fn decide(&self, requested: Option<OverwriteMode>) -> OverwriteDecision {
        decide(requested, |m| self.honours(m), self.default_overwrite)
    }

    /// Checks a file's size against this backend's limit before any byte moves.
    pub fn check_file_size(&self, size: u64) -> Result<(), SizeError> {
        check_file_size(size, self.max_file_size, self.name)
    }

    /// The honoured modes, by number.
    pub fn honoured_modes(&self) -> impl Iterator<Item = OverwriteMode> + '_ {
        OverwriteMode::ALL.into_iter().filter(|m| self.honours(*m))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn declared_sets() {
        assert_eq!(
            Capabilities::s3().honoured_modes().collect::<Vec<_>>(),
            [OverwriteMode::InPlaceAlways]
        );
        assert_eq!(Capabilities::file().honoured_modes().count(), 6);
        assert_eq!(Capabilities::s3().max_file_size, Some(1 << 40));
        assert!(Capabilities::memory().list_pending_uploads && !Capabilities::memory().resume);
        assert_eq!(Capabilities::file().max_file_size, None);
    }
}
