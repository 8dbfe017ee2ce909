//! # corral
//!
//! Per-user sandboxes on S3 buckets, local directories or memory, presented
//! as a filesystem: the composition root of the workspace. It wires the
//! domain's rules ([`corral_domain`]) to the backends ([`corral_adapters`])
//! and holds the services that need a runtime:
//!
//! - [`cache`]: the bounded transfer cache that stages S3 uploads and downloads;
//! - [`sandbox`]: the sandboxed filesystem service, one [`UserSandbox`] per user.

pub mod cache;
pub mod config;
pub mod sandbox;

pub use sandbox::{Copied, Corral, Entry, UserSandbox, Writer};
