//! # corral
//!
//! Per-user sandboxes on S3 buckets, local directories or memory, presented
//! as a filesystem. This crate is the composition root: it wires the rules
//! of [`corral_domain`] to the backends of [`corral_adapters`] and holds the
//! services that need a runtime. The `corral` command is a thin user of this
//! API.
//!
//! - [`Corral`]: built once per process from the mappings (JSON, or typed
//!   values) and the [`cache`] settings, with backends of one's own
//!   registered through [`Corral::builder`];
//! - [`UserSandbox`]: one user's view, with `stat`, `list` (a stream),
//!   `read` / `read_range` / `reader` (an `AsyncRead`), `write` /
//!   `write_stream` / `write_from` (returning the effective overwrite
//!   decision), `mkdir`, `remove`, `rename` and `copy`;
//! - [`cache`]: the bounded transfer cache that stages every upload and
//!   download; [`config`]: the config file.
//!
//! Dropping any future of the API releases its cache reservation and aborts
//! its multipart upload in the background; a program that exits right after
//! a cancellation waits for those aborts with
//! [`cache::wait_for_background_aborts`].
//!
//! ```
//! use corral::{Corral, cache::CacheConfig};
//! use corral_domain::{ErrorKind, Identity};
//!
//! # #[tokio::main(flavor = "current_thread")] async fn main() -> corral_domain::Result<()> {
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
pub mod sandbox;

pub use sandbox::{Copied, Corral, CorralBuilder, Entry, UserSandbox, Writer};
