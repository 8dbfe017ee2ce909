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
        }
    }

    /// The sandbox of one user. Each mount's backend is opened now; one that
    /// cannot be fails the operations on that mount, not the others.
    pub fn sandbox(&self, identity: &Identity) -> Result<UserSandbox, Error> {
        let view = self.mappings.resolve(identity)?;
        let slots = view
            .mounts()
            .iter()
            .map(|m| match self.backends.open(&m.spec) {
                Ok(open) => Slot::open(open.storage, open.root, m.point.clone()),
                Err(e) => Slot::Failed(e.kind(), e.message().to_owned()),
            })
            .collect();
        Ok(UserSandbox::new(view, slots, self.cache.clone()))
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
        })
    }
}
