//! # corral-domain
//!
//! The pure core of corral: what a sandbox *is*, with no I/O, no runtime and
//! no storage client. Everything here is a type or a function you can test
//! in isolation:
//!
//! | module | rule |
//! |---|---|
//! | [`path`] | user paths parsed once into [`VirtualPath`]; `..` never escapes |
//! | [`key`] | [`SandboxRoot`]: virtual path ⇄ object key, hiding what a listing must not show |
//! | [`template`] | `%u`, `%d`, `%f`, `%%` in a sandbox's `path`, with hostile values refused |
//! | [`config`] | typed `File` / `S3` / `Memory` specs, validated with errors naming the key |
//! | [`mapping`] | JetStream-compatible mappings and a user's [`UserView`] of mounts |
//! | [`listing`] | what a directory shows: name clashes, mounts, directory existence |
//! | [`node`] | links and special files of a File sandbox: never followed, never opened |
//! | [`overwrite`] | the six overwrite modes and the effective decision per backend |
//! | [`capability`] | what a backend declares it can do |
//! | [`parts`] | the 1 TiB limit and multipart part plans that fit the upload cache |
//! | [`retry`] | when a failed request is tried again |
//! | [`tree`] | recursive copy, move and remove: which key goes where, in which order |
//! | [`port`] | [`ObjectStorage`], the trait every backend implements |
//! | [`error`] | the one [`Error`] type with its [`ErrorKind`] |
//!
//! ```
//! use corral_domain::{Identity, Mappings, VirtualPath, mapping::{Location, ResolvedSpec}};
//!
//! let mappings: Mappings = serde_json::from_str(r#"{
//!     "": { "": { "type": "S3", "bucketName": "transfers", "path": "users/%u" } }
//! }"#).unwrap();
//! let view = mappings.resolve(&Identity::user("alice")).unwrap();
//!
//! // "/" is the sandbox root; ".." cannot climb above it.
//! let path = VirtualPath::parse("/reports/../q3.csv").unwrap();
//! let Location::Mount { mount, inner, .. } = view.locate(&path).unwrap() else { unreachable!() };
//! let ResolvedSpec::S3 { root, .. } = &mount.spec else { unreachable!() };
//! assert_eq!(root.key_for(&inner).unwrap().as_str(), "users/alice/q3.csv");
//! assert!(VirtualPath::parse("/../bob/secret").is_err());
//! ```
#![forbid(unsafe_code)]

pub mod capability;
pub mod config;
pub mod error;
pub mod key;
pub mod listing;
pub mod mapping;
pub mod node;
pub mod overwrite;
pub mod parts;
pub mod path;
pub mod port;
mod raw;
pub mod retry;
pub mod secret;
pub mod template;
pub mod tree;

pub use capability::Capabilities;
pub use config::{ConfigError, SandboxSpec};
pub use error::{Error, ErrorKind, Operation, Result};
pub use key::{ObjectKey, SandboxRoot};
pub use mapping::{Mappings, UserView};
pub use overwrite::{OverwriteDecision, OverwriteMode};
pub use path::{Resolution, VirtualPath};
pub use port::ObjectStorage;
pub use secret::Secret;
pub use template::Identity;
