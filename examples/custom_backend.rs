//! A backend of one's own: a toy in-memory store that implements the
//! storage port directly, passes the conformance suite, and serves a
//! `Custom` sandbox.
//!
//! ```sh
//! cargo run -p corral --example custom_backend
//! ```
#![allow(clippy::print_stdout, clippy::expect_used, clippy::unwrap_used)]

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use bytes::Bytes;
use corral::Corral;
use corral_domain::port::{
    ByteRange, CompletedPart, GetResult, ListItem, ListOptions, ListStream, ObjectMeta,
    PendingUpload, PutMode, PutResult, StoredPart, UploadId,
};
use corral_domain::{
    Capabilities, Error, ErrorKind, Identity, Mappings, ObjectKey, ObjectStorage, Result,
};

/// An upload in progress: its key and the parts received.
type Pending = (String, BTreeMap<u32, Bytes>);

/// Objects in a sorted map, uploads in progress beside them.
#[derive(Debug)]
struct ToyStore {
    capabilities: Capabilities,
    objects: Mutex<BTreeMap<String, Bytes>>,
    uploads: Mutex<HashMap<String, Pending>>,
}

impl ToyStore {
    fn new() -> Self {
        let mut capabilities = Capabilities::memory();
        capabilities.name = "Toy";
        capabilities.list_pending_uploads = true;
        Self {
            capabilities,
            objects: Mutex::new(BTreeMap::new()),
            uploads: Mutex::new(HashMap::new()),
        }
    }

    fn meta(key: &str, data: &Bytes) -> ObjectMeta {
        ObjectMeta {
            key: ObjectKey::from_raw(key),
            size: data.len() as u64,
            last_modified: None,
            etag: Some(format!("\"{}\"", data.len())),
            // A backend that knows its objects' MD5 gives it: downloads check it.
            checksum: None,
        }
    }

    fn not_found(key: &ObjectKey) -> Error {
        Error::not_found("no such object").with_path(key.as_str().to_owned())
    }
}

#[async_trait]
impl ObjectStorage for ToyStore {
    fn capabilities(&self) -> &Capabilities {
        &self.capabilities
    }

    async fn head(&self, key: &ObjectKey) -> Result<ObjectMeta> {
        let objects = self.objects.lock().unwrap();
        objects
            .get(key.as_str())
            .map(|d| Self::meta(key.as_str(), d))
            .ok_or_else(|| Self::not_found(key))
    }

    async fn get(&self, key: &ObjectKey, range: Option<ByteRange>) -> Result<GetResult> {
        let data = self
            .objects
            .lock()
            .unwrap()
            .get(key.as_str())
            .cloned()
            .ok_or_else(|| Self::not_found(key))?;
        let size = data.len() as u64;
        let range = match range {
            Some(r) => r.resolve(size)?,
            None => 0..size,
        };
        let body = data.slice(range.start as usize..range.end as usize);
        Ok(GetResult {
            meta: Self::meta(key.as_str(), &data),
            range,
            body: Box::pin(futures::stream::once(async move { Ok(body) })),
        })
    }

    async fn put(&self, key: &ObjectKey, data: Bytes, mode: PutMode) -> Result<PutResult> {
        let mut objects = self.objects.lock().unwrap();
        if mode == PutMode::Create && objects.contains_key(key.as_str()) {
            return Err(Error::new(
                ErrorKind::AlreadyExists,
                "the object already exists",
            ));
        }
        // The port's contract: the bytes may be cache buffers; keep a copy.
        objects.insert(key.as_str().to_owned(), Bytes::copy_from_slice(&data));
        Ok(PutResult::default())
    }

    async fn delete_many(&self, keys: Vec<ObjectKey>) -> Result<Vec<(ObjectKey, Error)>> {
        let mut objects = self.objects.lock().unwrap();
        for k in keys {
            objects.remove(k.as_str());
        }
        Ok(Vec::new())
    }

    fn list(&self, prefix: &ObjectKey, options: ListOptions) -> ListStream {
        let objects = self.objects.lock().unwrap();
        let mut items: Vec<ListItem> = Vec::new();
        for (key, data) in objects.range(prefix.as_str().to_owned()..) {
            let Some(rest) = key.strip_prefix(prefix.as_str()) else {
                break;
            };
            if options
                .start_after
                .as_ref()
                .is_some_and(|a| key.as_str() <= a.as_str())
            {
                continue;
            }
            match rest.find('/') {
                Some(i) if options.delimiter => {
                    let p = ObjectKey::from_raw(format!("{}{}", prefix, &rest[..=i]));
                    if items.last().map(ListItem::key) != Some(&p) {
                        items.push(ListItem::Prefix(p));
                    }
                }
                _ => items.push(ListItem::Object(Self::meta(key, data))),
            }
        }
        Box::pin(futures::stream::iter(items.into_iter().map(Ok)))
    }

    async fn copy(&self, from: &ObjectKey, to: &ObjectKey) -> Result<()> {
        let mut objects = self.objects.lock().unwrap();
        let data = objects
            .get(from.as_str())
            .cloned()
            .ok_or_else(|| Self::not_found(from))?;
        objects.insert(to.as_str().to_owned(), data);
        Ok(())
    }

    async fn create_multipart(&self, key: &ObjectKey) -> Result<UploadId> {
        let mut uploads = self.uploads.lock().unwrap();
        let id = format!("upload-{}", uploads.len() + 1 + rand_suffix());
        uploads.insert(id.clone(), (key.as_str().to_owned(), BTreeMap::new()));
        Ok(UploadId(id))
    }

    async fn upload_part(
        &self,
        _key: &ObjectKey,
        upload: &UploadId,
        number: u32,
        data: Bytes,
    ) -> Result<CompletedPart> {
        let mut uploads = self.uploads.lock().unwrap();
        let (_, parts) = uploads
            .get_mut(&upload.0)
            .ok_or_else(|| Error::not_found("no such upload"))?;
        parts.insert(number, Bytes::copy_from_slice(&data));
        Ok(CompletedPart {
            number,
            etag: format!("\"{number}\""),
        })
    }

    async fn complete_multipart(
        &self,
        key: &ObjectKey,
        upload: &UploadId,
        parts: Vec<CompletedPart>,
    ) -> Result<PutResult> {
        let (_, stored) = self
            .uploads
            .lock()
            .unwrap()
            .remove(&upload.0)
            .ok_or_else(|| Error::not_found("no such upload"))?;
        // Parts may come in any order; the object is them in part-number order.
        let mut parts = parts;
        parts.sort_by_key(|p| p.number);
        let mut whole = Vec::new();
        for p in parts {
            whole.extend_from_slice(
                stored
                    .get(&p.number)
                    .ok_or_else(|| Error::invalid_input("missing part"))?,
            );
        }
        self.objects
            .lock()
            .unwrap()
            .insert(key.as_str().to_owned(), whole.into());
        Ok(PutResult::default())
    }

    async fn abort_multipart(&self, _key: &ObjectKey, upload: &UploadId) -> Result<()> {
        self.uploads.lock().unwrap().remove(&upload.0);
        Ok(())
    }

    async fn list_pending_uploads(&self, prefix: &ObjectKey) -> Result<Vec<PendingUpload>> {
        let uploads = self.uploads.lock().unwrap();
        Ok(uploads
            .iter()
            .filter(|(_, (key, _))| key.starts_with(prefix.as_str()))
            .map(|(id, (key, _))| PendingUpload {
                key: ObjectKey::from_raw(key.clone()),
                upload_id: UploadId(id.clone()),
                initiated: None,
            })
            .collect())
    }

    // Listing pending uploads promises their parts too: what a server
    // needs to continue an upload another session started.
    async fn list_parts(&self, _key: &ObjectKey, upload: &UploadId) -> Result<Vec<StoredPart>> {
        let uploads = self.uploads.lock().unwrap();
        let (_, parts) = uploads
            .get(&upload.0)
            .ok_or_else(|| Error::not_found("no such upload"))?;
        Ok(parts
            .iter()
            .map(|(&number, data)| StoredPart {
                number,
                etag: format!("\"{number}\""),
                size: data.len() as u64,
            })
            .collect())
    }
}

fn rand_suffix() -> usize {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos() as usize)
        .unwrap_or(0)
}

#[tokio::main]
async fn main() -> Result<()> {
    let store: Arc<dyn ObjectStorage> = Arc::new(ToyStore::new());

    // 1. The conformance suite, as anyone can run it against their backend.
    let report =
        corral_conformance::run(&corral_conformance::Target::new("toy", Arc::clone(&store))).await;
    println!("{report}");
    assert!(
        report.failures().is_empty(),
        "the toy backend fails conformance"
    );

    // 2. Registered as a sandbox type of its own.
    let mappings: Mappings = serde_json::from_str(
        r#"{"": {"": {"type": "Custom", "backend": "toy", "path": "home/%u"}}}"#,
    )
    .expect("mappings");
    let corral = Corral::builder(mappings)
        .backend("toy", Arc::clone(&store))
        .build()?;
    let carol = corral.sandbox(&Identity::user("carol"))?;
    carol
        .write("/hello.txt", b"from a toy backend", None)
        .await?;
    assert_eq!(&carol.read("/hello.txt").await?[..], b"from a toy backend");
    assert_eq!(
        store
            .head(&ObjectKey::from_raw("home/carol/hello.txt"))
            .await?
            .size,
        18
    );
    println!("carol's /hello.txt is home/carol/hello.txt in the toy store");
    Ok(())
}
