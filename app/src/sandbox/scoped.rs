//! [`Scoped`]: one mount's backend, seen through the one layer that turns
//! bucket keys back into the user's paths.
//!
//! A backend's errors name the key they concern (`users/alice/reports/q3`);
//! a user must see `/reports/q3`, never where in a bucket, or in which host
//! directory, a sandbox lives. Every call the sandbox service makes to a
//! mount's backend goes through this wrapper, which maps the path of every
//! error (and the key, where the message repeats it) through the mount's
//! root and mount point, as OpenDAL's error-context layer adds context to
//! every error of the operator it wraps. The transfer cache is handed the
//! wrapper too, so its errors arrive mapped as well.

use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;
use corral_domain::key::KeyClass;
use corral_domain::port::{
    ByteRange, CompletedPart, GetResult, ListOptions, ListStream, ObjectMeta, PendingUpload,
    PutMode, PutOptions, PutResult, StoredPart, UploadId,
};
use corral_domain::{
    Capabilities, Error, ObjectKey, ObjectStorage, Result, SandboxRoot, VirtualPath,
};
use futures::TryStreamExt;

/// A mount's backend whose errors name the user's paths.
#[derive(Debug)]
pub(crate) struct Scoped {
    inner: Arc<dyn ObjectStorage>,
    root: SandboxRoot,
    point: VirtualPath,
}

impl Scoped {
    pub(crate) fn new(
        inner: Arc<dyn ObjectStorage>,
        root: SandboxRoot,
        point: VirtualPath,
    ) -> Self {
        Self { inner, root, point }
    }

    /// The backend itself (for identity checks and tools below the sandbox).
    pub(crate) fn inner(&self) -> &Arc<dyn ObjectStorage> {
        &self.inner
    }

    /// The user's path of a key of this mount: the mount point for what is
    /// no user path (the root's marker, a hidden key).
    pub(crate) fn user_path(&self, key: &str) -> VirtualPath {
        match self.root.classify(key) {
            KeyClass::File(p) | KeyClass::Directory(p) => self
                .point
                .join_path(&p)
                .unwrap_or_else(|_| self.point.clone()),
            KeyClass::RootMarker | KeyClass::Hidden(_) => self.point.clone(),
        }
    }

    /// `e`, naming the user's path where it named a key.
    pub(crate) fn user_error(&self, e: Error) -> Error {
        let Some(key) = e.key().filter(|_| e.path().is_none()).map(str::to_owned) else {
            return e;
        };
        let shown = self.user_path(&key).to_string();
        let message = if key.len() > 1 && e.message().contains(&key) {
            Some(e.message().replace(&key, &shown))
        } else {
            None
        };
        let e = e.with_path(shown);
        match message {
            Some(m) => e.with_message(m),
            None => e,
        }
    }
}

// A forwarder that forgot a method would fall back to the trait's default
// and bypass the error mapping (or the backend's own implementation).
#[deny(clippy::missing_trait_methods)]
#[async_trait]
impl ObjectStorage for Scoped {
    fn capabilities(&self) -> &Capabilities {
        self.inner.capabilities()
    }

    async fn head(&self, key: &ObjectKey) -> Result<ObjectMeta> {
        self.inner.head(key).await.map_err(|e| self.user_error(e))
    }

    async fn get(&self, key: &ObjectKey, range: Option<ByteRange>) -> Result<GetResult> {
        let mut r = self
            .inner
            .get(key, range)
            .await
            .map_err(|e| self.user_error(e))?;
        let (root, point) = (self.root.clone(), self.point.clone());
        let scoped = Self::new(Arc::clone(&self.inner), root, point);
        r.body = Box::pin(r.body.map_err(move |e| scoped.user_error(e)));
        Ok(r)
    }

    async fn put(&self, key: &ObjectKey, data: Bytes, mode: PutMode) -> Result<PutResult> {
        self.inner
            .put(key, data, mode)
            .await
            .map_err(|e| self.user_error(e))
    }

    async fn put_if_match(&self, key: &ObjectKey, data: Bytes, etag: &str) -> Result<PutResult> {
        self.inner
            .put_if_match(key, data, etag)
            .await
            .map_err(|e| self.user_error(e))
    }

    async fn put_with(
        &self,
        key: &ObjectKey,
        data: Bytes,
        options: PutOptions,
    ) -> Result<PutResult> {
        self.inner
            .put_with(key, data, options)
            .await
            .map_err(|e| self.user_error(e))
    }

    async fn set_modified(&self, key: &ObjectKey, modified: std::time::SystemTime) -> Result<()> {
        self.inner
            .set_modified(key, modified)
            .await
            .map_err(|e| self.user_error(e))
    }

    async fn delete_many(&self, keys: Vec<ObjectKey>) -> Result<Vec<(ObjectKey, Error)>> {
        let failed = self
            .inner
            .delete_many(keys)
            .await
            .map_err(|e| self.user_error(e))?;
        Ok(failed
            .into_iter()
            .map(|(k, e)| {
                let e = if e.path().is_none() && e.key().is_none() {
                    e.with_key(k.as_str().to_owned())
                } else {
                    e
                };
                (k, self.user_error(e))
            })
            .collect())
    }

    fn list(&self, prefix: &ObjectKey, options: ListOptions) -> ListStream {
        let scoped = Self::new(
            Arc::clone(&self.inner),
            self.root.clone(),
            self.point.clone(),
        );
        Box::pin(
            self.inner
                .list(prefix, options)
                .map_err(move |e| scoped.user_error(e)),
        )
    }

    async fn copy(&self, from: &ObjectKey, to: &ObjectKey) -> Result<()> {
        self.inner
            .copy(from, to)
            .await
            .map_err(|e| self.user_error(e))
    }

    async fn rename(&self, from: &ObjectKey, to: &ObjectKey) -> Result<()> {
        self.inner
            .rename(from, to)
            .await
            .map_err(|e| self.user_error(e))
    }

    async fn rename_no_replace(&self, from: &ObjectKey, to: &ObjectKey) -> Result<()> {
        self.inner
            .rename_no_replace(from, to)
            .await
            .map_err(|e| self.user_error(e))
    }

    async fn create_multipart(&self, key: &ObjectKey) -> Result<UploadId> {
        self.inner
            .create_multipart(key)
            .await
            .map_err(|e| self.user_error(e))
    }

    async fn upload_part(
        &self,
        key: &ObjectKey,
        upload: &UploadId,
        number: u32,
        data: Bytes,
    ) -> Result<CompletedPart> {
        self.inner
            .upload_part(key, upload, number, data)
            .await
            .map_err(|e| self.user_error(e))
    }

    async fn upload_part_copy(
        &self,
        key: &ObjectKey,
        upload: &UploadId,
        number: u32,
        source: &ObjectKey,
        range: std::ops::Range<u64>,
        if_match: Option<&str>,
    ) -> Result<CompletedPart> {
        self.inner
            .upload_part_copy(key, upload, number, source, range, if_match)
            .await
            .map_err(|e| self.user_error(e))
    }

    async fn complete_multipart(
        &self,
        key: &ObjectKey,
        upload: &UploadId,
        parts: Vec<CompletedPart>,
    ) -> Result<PutResult> {
        self.inner
            .complete_multipart(key, upload, parts)
            .await
            .map_err(|e| self.user_error(e))
    }

    async fn abort_multipart(&self, key: &ObjectKey, upload: &UploadId) -> Result<()> {
        self.inner
            .abort_multipart(key, upload)
            .await
            .map_err(|e| self.user_error(e))
    }

    async fn set_upload_expiry(&self, days: u32, replace: bool) -> Result<()> {
        self.inner
            .set_upload_expiry(days, replace)
            .await
            .map_err(|e| self.user_error(e))
    }

    async fn list_pending_uploads(&self, prefix: &ObjectKey) -> Result<Vec<PendingUpload>> {
        self.inner
            .list_pending_uploads(prefix)
            .await
            .map_err(|e| self.user_error(e))
    }
    async fn list_parts(&self, key: &ObjectKey, upload: &UploadId) -> Result<Vec<StoredPart>> {
        self.inner
            .list_parts(key, upload)
            .await
            .map_err(|e| self.user_error(e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use corral_domain::ErrorKind;

    #[derive(Debug)]
    struct Nothing(Capabilities);

    #[async_trait]
    impl ObjectStorage for Nothing {
        fn capabilities(&self) -> &Capabilities {
            &self.0
        }
        async fn head(&self, key: &ObjectKey) -> Result<ObjectMeta> {
            Err(Error::not_found(format!("no such key {key}")).with_key(key.as_str()))
        }
        async fn get(&self, key: &ObjectKey, _: Option<ByteRange>) -> Result<GetResult> {
            Err(Error::not_found("no").with_key(key.as_str()))
        }
        async fn put(&self, _: &ObjectKey, _: Bytes, _: PutMode) -> Result<PutResult> {
            Ok(PutResult::default())
        }
        async fn delete_many(&self, keys: Vec<ObjectKey>) -> Result<Vec<(ObjectKey, Error)>> {
            Ok(keys
                .into_iter()
                .map(|k| (k, Error::new(ErrorKind::Conflict, "busy")))
                .collect())
        }
        fn list(&self, _: &ObjectKey, _: ListOptions) -> ListStream {
            Box::pin(futures::stream::empty())
        }
        async fn copy(&self, _: &ObjectKey, _: &ObjectKey) -> Result<()> {
            Ok(())
        }
        async fn create_multipart(&self, _: &ObjectKey) -> Result<UploadId> {
            Ok(UploadId("u".into()))
        }
        async fn upload_part(
            &self,
            _: &ObjectKey,
            _: &UploadId,
            n: u32,
            _: Bytes,
        ) -> Result<CompletedPart> {
            Ok(CompletedPart {
                number: n,
                etag: String::new(),
            })
        }
        async fn complete_multipart(
            &self,
            _: &ObjectKey,
            _: &UploadId,
            _: Vec<CompletedPart>,
        ) -> Result<PutResult> {
            Ok(PutResult::default())
        }
        async fn abort_multipart(&self, _: &ObjectKey, _: &UploadId) -> Result<()> {
            Ok(())
        }
    }

    #[tokio::test]
    async fn errors_name_the_users_path_in_its_mount() {
        let inner: Arc<dyn ObjectStorage> = Arc::new(Nothing(Capabilities::s3()));
        let point = VirtualPath::parse("/archive").unwrap();
        let s = Scoped::new(inner, SandboxRoot::new("users/alice").unwrap(), point);
        let e = s
            .head(&ObjectKey::from_raw("users/alice/q3/r.csv"))
            .await
            .unwrap_err();
        assert_eq!(e.path(), Some("/archive/q3/r.csv"));
        assert_eq!(
            e.to_string(),
            "/archive/q3/r.csv: no such key /archive/q3/r.csv"
        );
        let failed = s
            .delete_many(vec![ObjectKey::from_raw("users/alice/d/")])
            .await
            .unwrap();
        assert_eq!(failed[0].1.path(), Some("/archive/d"));
        // A key outside the prefix is named by the mount point only.
        let e = s
            .head(&ObjectKey::from_raw("users/bob/x"))
            .await
            .unwrap_err();
        assert_eq!(e.path(), Some("/archive"));
        assert!(!e.to_string().contains("users/"), "{e}");
    }
}
