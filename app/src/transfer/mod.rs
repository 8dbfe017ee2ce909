//! Copies between local files and a user's sandbox, or inside it: what
//! `corral cp` does, for any caller.
//!
//! [`UserSandbox::copy_paths`](crate::UserSandbox::copy_paths) plans the
//! files to move (walking local and sandbox trees, never through a local
//! link; each directory listed once, not each file looked up), then runs
//! up to [`CopyOptions::transfers`] of them at once, each admitted by what
//! it will hold of the transfer cache
//! ([`TransferCache::most_held`](crate::cache::TransferCache::most_held)),
//! so that a tree of large files runs as many as fit and none times out
//! waiting for the cache. Uploads to S3
//! keep a journal ([`crate::journal`]) so that an interrupted copy can
//! resume ([`CopyOptions::resume`]) and nothing is left pending on the
//! server; [`CopyOptions::verify`] reads every copied file back.
//!
//! | module | what |
//! |---|---|
//! | `copy` | the plan and the run |
//! | `upload` | one upload: its journal entry, resuming it, sweeping stale ones |
//! | `verify` | the CRC-64 of a local file and a sandbox file agree |

mod copy;
mod upload;
mod verify;

use std::path::PathBuf;
use std::time::Duration;

use corral_domain::{Error, OverwriteMode, VirtualPath};

use crate::sandbox::SandboxPath;

/// One side of a copy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Location {
    /// A local path.
    Local(PathBuf),
    /// A path in the user's sandbox, parsed.
    Sandbox {
        /// The path.
        path: VirtualPath,
        /// Written with a trailing `/`: a directory to copy into.
        into: bool,
    },
}

impl Location {
    /// `corral:/PATH` is a sandbox path (`corral:` alone its root), parsed
    /// here, once; anything else a local path.
    pub fn parse(s: &str) -> Result<Self, Error> {
        match s.strip_prefix("corral:") {
            Some(p) => Ok(Self::Sandbox {
                path: p.to_virtual()?,
                into: p.ends_with('/') || p.is_empty(),
            }),
            None => Ok(Self::Local(PathBuf::from(s))),
        }
    }

    /// A path in the sandbox (`/reports` or a [`VirtualPath`]).
    pub fn sandbox(path: impl SandboxPath) -> Result<Self, Error> {
        Ok(Self::Sandbox {
            path: path.to_virtual()?,
            into: false,
        })
    }

    /// The last name of the path.
    pub(crate) fn base_name(&self) -> String {
        match self {
            Self::Local(p) => p
                .to_string_lossy()
                .trim_end_matches('/')
                .rsplit('/')
                .next()
                .unwrap_or_default()
                .to_owned(),
            Self::Sandbox { path, .. } => path.file_name().unwrap_or_default().to_owned(),
        }
    }

    /// As the user wrote it, for messages.
    pub(crate) fn shown(&self) -> String {
        match self {
            Self::Local(p) => p.display().to_string(),
            Self::Sandbox { path, .. } => format!("corral:{path}"),
        }
    }
}

/// How [`UserSandbox::copy_paths`](crate::UserSandbox::copy_paths) copies.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CopyOptions {
    /// Copy directories and everything in them.
    pub recursive: bool,
    /// The overwrite mode asked for (the backend's when `None` or ignored).
    pub overwrite: Option<OverwriteMode>,
    /// Read every copied file back and compare it with its source.
    pub verify: bool,
    /// Continue interrupted uploads of the same files where they stopped.
    pub resume: bool,
    /// Abort interrupted uploads older than this.
    pub stale_after: Duration,
    /// Files moved at once (at least 1).
    pub transfers: usize,
    /// Where the journal of uploads in flight is kept; `None` keeps none
    /// (an interrupted upload is then aborted, never resumed).
    pub journal_dir: Option<PathBuf>,
}

impl Default for CopyOptions {
    fn default() -> Self {
        Self {
            recursive: false,
            overwrite: None,
            verify: false,
            resume: false,
            stale_after: Duration::from_secs(24 * 3600),
            transfers: 32,
            journal_dir: None,
        }
    }
}

/// What a copy tells as it goes. Every method has a default that does
/// nothing.
pub trait Progress: Send + Sync {
    /// The plan: this many files and bytes in all (called once, before any
    /// byte moves).
    fn planned(&self, files: u64, bytes: u64) {
        let _ = (files, bytes);
    }
    /// Bytes moved (or found on the server already, when resumed).
    fn advance(&self, bytes: u64) {
        let _ = bytes;
    }
    /// A file is done.
    fn file_done(&self) {}
    /// Something the user should know (an upload resumed or aborted, an
    /// overwrite mode ignored).
    fn notice(&self, message: &str) {
        let _ = message;
    }
}

/// A [`Progress`] that tells nothing.
#[derive(Debug, Clone, Copy, Default)]
pub struct NoProgress;

impl Progress for NoProgress {}

/// What a copy did.
#[derive(Debug, Clone, PartialEq, Default, serde::Serialize)]
pub struct CopySummary {
    /// Files copied.
    pub files: u64,
    /// Their bytes.
    pub bytes: u64,
    /// Bytes sent by uploads (less than `bytes` when uploads resumed).
    pub bytes_sent: u64,
    /// Seconds the copy took.
    pub seconds: f64,
    /// The notices, sorted, each once.
    pub notices: Vec<String>,
}
