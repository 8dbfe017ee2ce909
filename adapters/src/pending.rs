//! The multipart uploads of a store that keeps them in this process
//! (Memory, embedders' stores): what ListMultipartUploads and ListParts
//! show on S3, so that an upload kept after a dropped connection can be
//! found again and continued. Shared by every backend built on one store.

use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;
use std::time::SystemTime;

use corral_domain::port::{PendingUpload, StoredPart, UploadId};
use corral_domain::{Error, ObjectKey, Operation, Result};

/// Uploads created and neither completed nor aborted, by id.
#[derive(Debug, Default)]
pub(crate) struct Tracker(Mutex<HashMap<String, Tracked>>);

#[derive(Debug)]
struct Tracked {
    key: ObjectKey,
    initiated: SystemTime,
    parts: BTreeMap<u32, StoredPart>,
}

impl Tracker {
    fn map(&self) -> std::sync::MutexGuard<'_, HashMap<String, Tracked>> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub(crate) fn created(&self, key: &ObjectKey, id: &UploadId) {
        self.map().insert(
            id.0.clone(),
            Tracked {
                key: key.clone(),
                initiated: SystemTime::now(),
                parts: BTreeMap::new(),
            },
        );
    }

    /// A part stored (again: it replaces the earlier one).
    pub(crate) fn part(&self, id: &UploadId, part: StoredPart) {
        if let Some(t) = self.map().get_mut(&id.0) {
            t.parts.insert(part.number, part);
        }
    }

    /// Completed or aborted.
    pub(crate) fn ended(&self, id: &UploadId) {
        self.map().remove(&id.0);
    }

    pub(crate) fn list(&self, prefix: &ObjectKey) -> Vec<PendingUpload> {
        let mut v: Vec<PendingUpload> = self
            .map()
            .iter()
            .filter(|(_, t)| t.key.as_str().starts_with(prefix.as_str()))
            .map(|(id, t)| PendingUpload {
                key: t.key.clone(),
                upload_id: UploadId(id.clone()),
                initiated: Some(t.initiated),
            })
            .collect();
        v.sort_by(|a, b| (&a.key, a.initiated).cmp(&(&b.key, b.initiated)));
        v
    }

    pub(crate) fn parts(&self, key: &ObjectKey, id: &UploadId) -> Result<Vec<StoredPart>> {
        match self.map().get(&id.0) {
            Some(t) if t.key == *key => Ok(t.parts.values().cloned().collect()),
            _ => Err(Error::not_found(format!(
                "no such multipart upload {id} (completed or aborted already)"
            ))
            .with_operation(Operation::ListMultipart)
            .with_key(key.as_str().to_owned())),
        }
    }
}
