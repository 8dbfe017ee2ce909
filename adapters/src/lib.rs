//! # corral-adapters
//!
//! The storage port of [`corral_domain`], implemented for three kinds of
//! sandbox:
//!
//! | type | store | notes |
//! |---|---|---|
//! | `S3` | `AmazonS3` | every sandbox setting: endpoint, path-style, proxy with Basic auth, TLS trust (`caFile`, `caPath`, `verifySSL`), retries and timeouts; listings and pending uploads through corral's own signed requests |
//! | `File` | [`FileBackend`] (cap-std) | the sandbox directory must exist; every path is resolved beneath its handle, links are never followed |
//! | `Memory` | `InMemory` | one store per [`Backends`], shared by every Memory sandbox built from it |
//!
//! [`Backends`] is the one entry point: it builds (and for S3, reuses) the
//! backend behind a resolved sandbox spec.
//!
//! ```
//! use corral_adapters::Backends;
//! use corral_domain::{Identity, Mappings, ObjectKey};
//! use corral_domain::port::PutMode;
//!
//! # #[tokio::main(flavor = "current_thread")] async fn main() -> corral_domain::Result<()> {
//! let mappings: Mappings = serde_json::from_str(r#"{"": {"": {"type": "Memory", "path": "users/%u"}}}"#).unwrap();
//! let view = mappings.resolve(&Identity::user("alice"))?;
//! let backends = Backends::new();
//! let sandbox = backends.open(&view.mounts()[0].spec)?;
//! assert_eq!(sandbox.root.prefix(), "users/alice/");
//! let key = ObjectKey::from_raw("users/alice/hello.txt");
//! sandbox.storage.put(&key, "hi".into(), PutMode::Create).await?;
//! assert_eq!(sandbox.storage.head(&key).await?.size, 2);
//! # Ok(()) }
//! ```

mod errors;
mod file;
mod objects;
mod paginate;
mod pending;
pub mod retry;
mod s3;
mod store;
mod tls;

use std::path::Path;
use std::sync::{Arc, Mutex};

use corral_domain::config::S3Spec;
use corral_domain::mapping::ResolvedSpec;
use corral_domain::{Capabilities, ObjectStorage, Result, SandboxRoot};
use object_store::memory::InMemory;

pub use file::FileBackend;
pub use s3::S3Backend;
pub use store::ObjectStoreBackend;

/// A backend and the key prefix of one sandbox in it.
#[derive(Debug, Clone)]
pub struct OpenSandbox {
    /// The bucket, directory or store.
    pub storage: Arc<dyn ObjectStorage>,
    /// Where the sandbox lives in it.
    pub root: SandboxRoot,
}

/// Builds backends from resolved specs. Keep one per process: S3 clients are
/// reused per bucket and connection settings (one connection pool for every
/// user of a bucket), and Memory sandboxes share one store.
#[derive(Debug, Default)]
pub struct Backends {
    memory: Arc<InMemory>,
    memory_uploads: Arc<pending::Tracker>,
    file_uploads: Arc<file::Uploads>,
    s3: Mutex<Vec<(S3Spec, Arc<S3Backend>)>>,
    custom: Mutex<Vec<(String, Arc<dyn ObjectStorage>)>>,
}

impl Backends {
    /// An empty set: nothing is connected until first used.
    pub fn new() -> Self {
        Self::default()
    }

    /// The backend and root of a resolved sandbox.
    pub fn open(&self, spec: &ResolvedSpec) -> Result<OpenSandbox> {
        match spec {
            ResolvedSpec::File { dir, .. } => Ok(OpenSandbox {
                storage: Arc::new(FileBackend::open_sharing(
                    Path::new(dir),
                    Arc::clone(&self.file_uploads),
                )?),
                root: SandboxRoot::BUCKET_ROOT,
            }),
            ResolvedSpec::Memory { root } => Ok(OpenSandbox {
                storage: Arc::new(
                    ObjectStoreBackend::memory(Arc::clone(&self.memory))
                        .with_tracker(Arc::clone(&self.memory_uploads)),
                ),
                root: root.clone(),
            }),
            ResolvedSpec::S3 { spec, root } => Ok(OpenSandbox {
                storage: self.s3(spec)?,
                root: root.clone(),
            }),
            ResolvedSpec::Custom { backend, root } => {
                let custom = self.custom.lock().unwrap_or_else(|p| p.into_inner());
                let storage = custom
                    .iter()
                    .find(|(name, _)| name == backend)
                    .map(|(_, s)| Arc::clone(s))
                    .ok_or_else(|| {
                        corral_domain::Error::invalid_input(format!(
                            "no backend is registered under the name {backend:?} (a Custom sandbox's `backend`)"
                        ))
                    })?;
                Ok(OpenSandbox {
                    storage,
                    root: root.clone(),
                })
            }
            other => Err(corral_domain::Error::unsupported(format!(
                "no backend for sandbox type {}",
                other.type_name()
            ))),
        }
    }

    /// The S3 backend of a bucket (the spec's `path` is ignored: it is per user).
    pub fn s3(&self, spec: &S3Spec) -> Result<Arc<S3Backend>> {
        let mut cache = self.s3.lock().unwrap_or_else(|p| p.into_inner());
        let same = |a: &S3Spec| {
            S3Spec {
                path: Default::default(),
                ..a.clone()
            } == S3Spec {
                path: Default::default(),
                ..spec.clone()
            }
        };
        if let Some((_, b)) = cache.iter().find(|(s, _)| same(s)) {
            return Ok(Arc::clone(b));
        }
        let mut caps = Capabilities::s3();
        caps.list_pending_uploads = spec.quirks.list_multipart_uploads;
        caps.conditional_create = spec.quirks.conditional_create;
        let backend = Arc::new(S3Backend::new(spec, caps)?);
        cache.push((spec.clone(), Arc::clone(&backend)));
        Ok(backend)
    }

    /// Registers a backend of one's own under `name`, for `Custom` sandboxes
    /// (`{"type": "Custom", "backend": "NAME", "path": "…"}`). A later
    /// registration under the same name replaces the earlier one.
    pub fn register(&self, name: impl Into<String>, storage: Arc<dyn ObjectStorage>) {
        let name = name.into();
        let mut custom = self.custom.lock().unwrap_or_else(|p| p.into_inner());
        custom.retain(|(n, _)| *n != name);
        custom.push((name, storage));
    }

    /// Registers any `object_store` store (with multipart support) under `name`.
    pub fn register_object_store(
        &self,
        name: impl Into<String>,
        store: Arc<dyn object_store::ObjectStore>,
        multipart: Arc<dyn object_store::multipart::MultipartStore>,
        capabilities: Capabilities,
    ) {
        self.register(
            name,
            Arc::new(ObjectStoreBackend::custom(store, multipart, capabilities)),
        );
    }

    /// The in-memory store shared by Memory sandboxes (for tests that plant objects).
    pub fn memory_store(&self) -> Arc<InMemory> {
        Arc::clone(&self.memory)
    }
}

/// The File backend of an existing directory.
pub fn file_backend(dir: &Path) -> Result<FileBackend> {
    FileBackend::open(dir)
}

/// The S3 backend for `spec` with explicit capabilities (a server's quirks), not cached.
pub fn s3_backend(spec: &S3Spec, capabilities: Capabilities) -> Result<S3Backend> {
    S3Backend::new(spec, capabilities)
}
