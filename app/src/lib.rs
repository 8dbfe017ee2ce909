//! # corral
//!
//! Per-user sandboxes on S3 buckets, local directories or memory, presented
//! as a filesystem. This crate is the library that owns every operation;
//! the `corral` command and `corral serve sftp` are thin users of it. It
//! wires the rules of `corral-domain` to the backends of `corral-adapters`
//! and holds what needs a runtime:
//!
//! - [`Corral`]: built once per process from the mappings (JSON, or typed
//!   values) and the [`cache`] settings, with backends of one's own
//!   registered through [`Corral::builder`];
//! - [`UserSandbox`]: one user's view, with `stat`, `list` (a stream),
//!   `read` / `read_range` / `reader` (an `AsyncRead`), `write` /
//!   `write_stream` / `write_from` (returning the effective overwrite
//!   decision), `mkdir`, `remove`, `rename`, `copy`; copies between local
//!   files and the sandbox with resume and verification
//!   ([`UserSandbox::copy_paths`], [`transfer`]); `check`, `describe`,
//!   pending uploads and the conformance suite for operators;
//! - [`cache`]: the bounded transfer cache that stages every upload and
//!   download; [`config`]: the config file; [`journal`]: uploads in flight.
//!
//! Dropping any future of the API releases its cache reservation and aborts
//! its multipart upload in the background; a program that exits right after
//! a cancellation waits for those aborts with
//! [`cache::TransferCache::settle`].
//!
//! ```
//! use corral::{Corral, ErrorKind, Identity, cache::CacheConfig};
//!
//! # #[tokio::main(flavor = "current_thread")] async fn main() -> corral::Result<()> {
//! // In production: "type": "S3" with a bucket; in tests, memory.
//! let corral = Corral::from_json(r#"{"": {"": {"type": "Memory", "path": "users/%u"}}}"#, CacheConfig::default())?;
//! let alice = corral.sandbox(&Identity::user("alice"))?;
//! alice.write("/hello.txt", b"hi", None).await?;
//! assert_eq!(&alice.read("/hello.txt").await?[..], b"hi");
//!
//! let bob = corral.sandbox(&Identity::user("bob"))?;
//! assert_eq!(bob.stat("/hello.txt").await.unwrap_err().kind(), ErrorKind::NotFound);
//! # Ok(()) }
//! ```

pub mod cache;
pub mod config;
pub mod journal;
mod sandbox;
pub mod source;
pub mod transfer;

pub use sandbox::admin::{AbortWhich, MountCheck, MountInfo, PendingUploadInfo};
pub use sandbox::read::FileReader;
pub use sandbox::service::{Corral, CorralBuilder};
pub use sandbox::tree::{RemoveOptions, RenameOptions, TreeCopyOptions};
pub use sandbox::write::{MkdirOptions, WriteOptions, Writer};
pub use sandbox::{Copied, Entry, SandboxPath, UserSandbox};

/// The conformance suite, as [`UserSandbox::conformance`] runs it.
pub use corral_conformance as conformance;
pub use corral_domain::listing::{DirEntry, EntryKind};
pub use corral_domain::overwrite::OverwriteDecision;
/// A size in bytes for people: `64 MiB`.
pub use corral_domain::parts::human as human_size;
pub use corral_domain::{
    Capabilities, Error, ErrorKind, Identity, Mappings, ObjectStorage, OverwriteMode, Resolution,
    Result, VirtualPath,
};
