//! [`Corral`]: corral for a whole process: the mappings, the backends and
//! the one transfer cache every user's transfers share.

use std::sync::Arc;

use corral_adapters::Backends;
use corral_domain::{Error, Identity, Mappings, ObjectStorage, Operation};

use super::{Slot, UserSandbox};
use crate::cache::{CacheConfig, TransferCache};

/// corral for a whole process: the mappings, the backends and the transfer cache.
#[derive(Debug, Clone)]
pub struct Corral {
    mappings: Arc<Mappings>,
    backends: Arc<Backends>,
    cache: TransferCache,
    writing: Arc<super::writing::Writing>,
    partials: bool,
}

impl Corral {
    /// Builds the service. The cache is opened (and, in file mode, its file
    /// created and locked) here; backends connect on first use.
    pub fn new(mappings: Mappings, cache: CacheConfig) -> Result<Self, Error> {
        Self::builder(mappings).cache(cache).build()
    }

    /// Builds the service from mappings written as JSON (the JetStream-compatible shape).
    pub fn from_json(mappings: &str, cache: CacheConfig) -> Result<Self, Error> {
        let mappings: Mappings = serde_json::from_str(mappings).map_err(|e| {
            Error::invalid_input(format!("mappings: {e}")).with_operation(Operation::Configure)
        })?;
        Self::new(mappings, cache)
    }

    /// A builder, to register backends of one's own before building.
    pub fn builder(mappings: Mappings) -> CorralBuilder {
        CorralBuilder {
            mappings,
            cache: CacheConfig::default(),
            cache_handle: None,
            backends: Backends::new(),
        }
    }

    /// The mappings.
    pub fn mappings(&self) -> &Mappings {
        &self.mappings
    }

    /// The transfer cache.
    pub fn cache(&self) -> &TransferCache {
        &self.cache
    }

    /// The same service with other mappings: the backends (and their
    /// connection pools) and the cache stay, so transfers in progress go on
    /// and the new mappings apply to the sandboxes opened from now on.
    pub fn with_mappings(&self, mappings: Mappings) -> Self {
        Self {
            mappings: Arc::new(mappings),
            backends: Arc::clone(&self.backends),
            cache: self.cache.clone(),
            writing: Arc::clone(&self.writing),
            partials: self.partials,
        }
    }

    /// Keeps the uploads whose writer goes away before completing them (a
    /// dropped connection, a killed client) so that a later writer continues
    /// them, rather than aborting them: a file server turns this on. Such a
    /// file shows to `stat` and listings with the size stored, cannot be read
    /// until completed, and is continued by a write without truncation that
    /// starts at that size. The caller aborts those left too long
    /// ([`Self::abort_stale_uploads`]). See docs/SEMANTICS.md.
    #[must_use]
    pub fn keep_partial_uploads(mut self, on: bool) -> Self {
        self.partials = on;
        self
    }

    /// Creates the user's own File sandboxes where missing: those whose
    /// directory comes from a template (`/srv/home/%u`), below the part the
    /// template fixes (which the operator makes; it is never created), each
    /// new directory with mode 0700, never through a link. A server calls
    /// it at login. Returns the directories made.
    pub fn create_user_roots(&self, identity: &Identity) -> Result<Vec<String>, Error> {
        let view = self.mappings.resolve(identity)?;
        let mut made = Vec::new();
        for m in view.mounts() {
            if let corral_domain::mapping::ResolvedSpec::File {
                dir,
                base: Some(base),
            } = &m.spec
                && !base.is_empty()
                && corral_adapters::FileBackend::create_below(
                    std::path::Path::new(base),
                    std::path::Path::new(dir),
                )?
            {
                made.push(dir.clone());
            }
        }
        Ok(made)
    }

    /// Aborts the multipart uploads pending under every S3 mapping (for
    /// every user, whichever tool started them) that started longer than
    /// `older_than` ago; returns how many. A server runs this at start and
    /// then periodically, so that uploads a killed process left behind do
    /// not cost storage for ever. Each mapping's prefix is the part of its
    /// path before the first placeholder (`users/` for `users/%u`).
    pub async fn abort_stale_uploads(&self, older_than: std::time::Duration) -> Result<u64, Error> {
        let mut seen = std::collections::BTreeSet::new();
        let mut aborted = 0;
        for (_, _, spec) in self.mappings.entries() {
            let corral_domain::SandboxSpec::S3(s3) = spec else {
                continue;
            };
            if !s3.quirks.list_multipart_uploads {
                continue;
            }
            let path = s3.path.as_str().trim_matches('/');
            let prefix = match s3.path.literal_base() {
                Some(base) => base.trim_matches('/').to_owned(),
                None => path.to_owned(),
            };
            let prefix = if prefix.is_empty() {
                String::new()
            } else {
                format!("{prefix}/")
            };
            let endpoint = s3.endpoint.as_ref().map(|u| u.to_string());
            if !seen.insert((endpoint, s3.bucket_name.clone(), prefix.clone())) {
                continue;
            }
            let backend = self.backends.s3(s3)?;
            let pending = backend
                .list_pending_uploads(&corral_domain::ObjectKey::from_raw(prefix.clone()))
                .await?;
            let now = std::time::SystemTime::now();
            for u in pending {
                let old = u
                    .initiated
                    .and_then(|t| now.duration_since(t).ok())
                    .is_some_and(|age| age >= older_than);
                if !old {
                    continue;
                }
                match backend.abort_multipart(&u.key, &u.upload_id).await {
                    Ok(()) => {
                        aborted += 1;
                        tracing::info!(bucket = %s3.bucket_name, key = %u.key, upload = %u.upload_id, "aborted a stale multipart upload");
                    }
                    Err(e) => {
                        tracing::warn!(bucket = %s3.bucket_name, key = %u.key, error = %e, "cannot abort a stale multipart upload");
                    }
                }
            }
        }
        Ok(aborted)
    }

    /// Files being written in this process (shown to `stat` and listings
    /// before they complete).
    pub fn writes_in_progress(&self) -> usize {
        self.writing.len()
    }

    /// The sandbox of one user. Each mount's backend is opened now; one that
    /// cannot be fails the operations on that mount, not the others. The
    /// user's transfers take the cache through the user's account, which
    /// every sandbox of that user shares.
    pub fn sandbox(&self, identity: &Identity) -> Result<UserSandbox, Error> {
        let view = self.mappings.resolve(identity)?;
        let slots = view
            .mounts()
            .iter()
            .map(|m| match self.backends.open(&m.spec) {
                Ok(open) => Slot::open(
                    open.storage,
                    open.root,
                    m.point.clone(),
                    super::store_id(&m.spec),
                ),
                Err(e) => Slot::Failed(e.kind(), e.message().to_owned()),
            })
            .collect();
        Ok(UserSandbox::new(
            view,
            slots,
            self.cache.for_account(&identity.user),
            Arc::clone(&self.writing),
        )
        .with_partials(self.partials))
    }
}

/// Builds a [`Corral`]: mappings, cache settings, and backends of one's own.
#[derive(Debug)]
pub struct CorralBuilder {
    mappings: Mappings,
    cache: CacheConfig,
    cache_handle: Option<TransferCache>,
    backends: Backends,
}

impl CorralBuilder {
    /// The transfer cache settings (default: 1 GiB in memory, 64 MiB per transfer).
    #[must_use]
    pub fn cache(mut self, cache: CacheConfig) -> Self {
        self.cache = cache;
        self
    }

    /// A transfer cache opened already, shared with another service.
    #[must_use]
    pub fn shared_cache(mut self, cache: TransferCache) -> Self {
        self.cache_handle = Some(cache);
        self
    }

    /// Registers a backend for `Custom` sandboxes naming it
    /// (`{"type": "Custom", "backend": "NAME", "path": "prefix/%u"}`).
    #[must_use]
    pub fn backend(self, name: impl Into<String>, storage: Arc<dyn ObjectStorage>) -> Self {
        self.backends.register(name, storage);
        self
    }

    /// Opens the cache and builds the service.
    pub fn build(self) -> Result<Corral, Error> {
        let cache = match self.cache_handle {
            Some(c) => c,
            None => TransferCache::open(self.cache)?,
        };
        Ok(Corral {
            mappings: Arc::new(self.mappings),
            backends: Arc::new(self.backends),
            cache,
            writing: Arc::default(),
            partials: false,
        })
    }
}
