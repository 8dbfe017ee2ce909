//! Where a server's configuration and users are read from: a local file,
//! or an object in a bucket (`s3://BUCKET/KEY`, with the S3 options of a
//! mapping in a small JSON file), so that several instances share one copy
//! and see a change within their poll interval. Each read returns the
//! source's version (the object's ETag, or the file's time and size): a
//! server polls the version and reads again only when it changed.

use std::path::{Path, PathBuf};

use crate::cache::CacheConfig;
use crate::{Corral, Error, ErrorKind, Identity, UserSandbox, VirtualPath};

/// A configuration or users source.
#[derive(Debug)]
pub struct Source {
    kind: Kind,
    /// How messages name it (`s3://bucket/key` or the path).
    name: String,
}

#[derive(Debug)]
enum Kind {
    File(PathBuf),
    Object {
        sandbox: UserSandbox,
        path: VirtualPath,
    },
}

/// Tries of a change to a shared source that others change at once.
const ATTEMPTS: u64 = 10;

/// A source's text and its version when read.
#[derive(Debug, Clone)]
pub struct Fetched {
    /// The document.
    pub text: String,
    /// What [`Source::version`] returned when it was read.
    pub version: Option<String>,
}

fn bad(message: String) -> Error {
    Error::new(ErrorKind::InvalidInput, message)
}

impl Source {
    /// `location` is `s3://BUCKET/KEY` (the S3 options, as in a mapping
    /// spec, from the JSON file `s3_options`: endpointOverride, accessKeyId,
    /// secretKey, region…) or a local path.
    pub fn new(location: &Path, s3_options: Option<&Path>) -> Result<Self, Error> {
        let text = location.to_string_lossy();
        let Some(rest) = text.strip_prefix("s3://") else {
            return Ok(Self {
                kind: Kind::File(location.to_path_buf()),
                name: location.display().to_string(),
            });
        };
        let (bucket, key) = rest
            .split_once('/')
            .filter(|(b, k)| !b.is_empty() && !k.is_empty() && !k.ends_with('/'))
            .ok_or_else(|| bad(format!("{text}: say s3://BUCKET/KEY")))?;
        let options = match s3_options {
            Some(p) => {
                let raw = std::fs::read_to_string(p)
                    .map_err(|e| bad(format!("--source-options {}: {e}", p.display())))?;
                serde_json::from_str::<serde_json::Value>(&raw)
                    .map_err(|e| bad(format!("--source-options {}: {e}", p.display())))?
            }
            None => serde_json::json!({}),
        };
        let serde_json::Value::Object(mut spec) = options else {
            return Err(bad(
                "--source-options: the S3 options must be a JSON object, as a mapping's".to_owned(),
            ));
        };
        let (dir, file) = key.rsplit_once('/').unwrap_or(("", key));
        spec.insert("type".into(), "S3".into());
        spec.insert("bucketName".into(), bucket.into());
        spec.insert("path".into(), dir.into());
        let mappings = serde_json::json!({"": {"": spec}}).to_string();
        let corral = Corral::from_json(&mappings, CacheConfig::default())
            .map_err(|e| bad(format!("{text}: {e}")))?;
        let sandbox = corral.sandbox(&Identity::user("corral-source"))?;
        let path =
            VirtualPath::parse(&format!("/{file}")).map_err(|e| bad(format!("{text}: {e}")))?;
        Ok(Self {
            kind: Kind::Object { sandbox, path },
            name: text.into_owned(),
        })
    }

    /// `e`, its message prefixed with the source's name.
    fn named(&self, e: Error) -> Error {
        let message = format!("{}: {}", self.name, e.message());
        e.with_message(message)
    }

    /// How messages name it.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Whether it is an object in a bucket (shared by instances, polled).
    pub fn is_object(&self) -> bool {
        matches!(self.kind, Kind::Object { .. })
    }

    /// The local file, if it is one.
    pub fn local_path(&self) -> Option<&Path> {
        match &self.kind {
            Kind::File(p) => Some(p),
            Kind::Object { .. } => None,
        }
    }

    /// Its version now: the object's ETag, or the file's time and size.
    pub async fn version(&self) -> Result<Option<String>, Error> {
        match &self.kind {
            Kind::File(p) => {
                let meta = tokio::fs::metadata(p).await.map_err(|e| {
                    Error::new(ErrorKind::from_io(e.kind()), format!("{}: {e}", self.name))
                })?;
                let t = meta
                    .modified()
                    .ok()
                    .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
                    .map_or(0, |d| d.as_nanos());
                Ok(Some(format!("{t}-{}", meta.len())))
            }
            Kind::Object { sandbox, path } => {
                let e = sandbox.stat(path).await.map_err(|e| self.named(e))?;
                Ok(e.etag.or_else(|| {
                    e.modified
                        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
                        .map(|d| format!("{}-{}", d.as_nanos(), e.size))
                }))
            }
        }
    }

    /// Replaces an object source with `text` only if it is still at
    /// `version` ([`Fetched::version`]): [`ErrorKind::Conflict`] if another
    /// writer changed it since. A local file is edited by
    /// [`crate::config::edit_mappings`] instead.
    pub async fn replace(&self, text: String, version: &str) -> Result<(), Error> {
        match &self.kind {
            Kind::File(_) => Err(Error::unsupported(format!(
                "{}: a local file is replaced by rename, not by this call",
                self.name
            ))),
            Kind::Object { sandbox, path } => sandbox
                .replace_if_unchanged(path, bytes::Bytes::from(text), version)
                .await
                .map(|_| ())
                .map_err(|e| self.named(e)),
        }
    }

    /// Sets (or, with `None`, removes) `user`'s mappings in this config
    /// source ([`crate::config::edited_mappings`], through [`Self::edit`]).
    pub async fn edit_mappings(
        &self,
        user: &str,
        mounts: Option<serde_json::Value>,
    ) -> Result<(), Error> {
        let name = self.name.clone();
        self.edit(|before| crate::config::edited_mappings(before, &name, user, mounts.clone()))
            .await
    }

    /// Replaces the document with what `edit` makes of it (`edit` checks the
    /// whole new text; nothing changes if it fails). A local file:
    /// [`crate::config::edit_file`]. An object: read with its ETag, edited,
    /// and written back only if unchanged (`If-Match`); if another writer
    /// changed it meanwhile, their version is read and edited again (up to
    /// 10 times, spaced), so that neither change is lost.
    pub async fn edit(&self, edit: impl Fn(&str) -> Result<String, Error>) -> Result<(), Error> {
        if let Kind::File(p) = &self.kind {
            return crate::config::edit_file(p, edit);
        }
        let mut last = None;
        for attempt in 0..ATTEMPTS {
            if attempt > 0 {
                // Apart, so that racing admins do not meet again at once.
                let jitter = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0, |d| u64::from(d.subsec_nanos()) % 100);
                tokio::time::sleep(std::time::Duration::from_millis(50 * attempt + jitter)).await;
            }
            // Changed between its HEAD and its GET: read again.
            let before = match self.read().await {
                Ok(b) => b,
                Err(e) if e.kind() == ErrorKind::Conflict => {
                    last = Some(e);
                    continue;
                }
                Err(e) => return Err(e),
            };
            let text = edit(&before.text)?;
            let Some(version) = before.version else {
                return Err(Error::unsupported(format!(
                    "{}: the server gives no ETag, so a change cannot be made safely",
                    self.name
                )));
            };
            match self.replace(text, &version).await {
                Ok(()) => return Ok(()),
                Err(e) if e.kind() == ErrorKind::Conflict => last = Some(e),
                Err(e) => return Err(e),
            }
        }
        Err(last.unwrap_or_else(|| {
            Error::new(
                ErrorKind::Conflict,
                format!("{}: changed meanwhile", self.name),
            )
        }))
    }

    /// Reads it whole, with its version.
    pub async fn read(&self) -> Result<Fetched, Error> {
        let version = self.version().await?;
        let bytes = match &self.kind {
            Kind::File(p) => tokio::fs::read(p).await.map_err(|e| {
                Error::new(ErrorKind::from_io(e.kind()), format!("{}: {e}", self.name))
            })?,
            Kind::Object { sandbox, path } => sandbox
                .read(path)
                .await
                .map_err(|e| self.named(e))?
                .to_vec(),
        };
        let text =
            String::from_utf8(bytes).map_err(|_| bad(format!("{}: not UTF-8 text", self.name)))?;
        Ok(Fetched { text, version })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn locations_are_told_apart_and_checked() {
        let f = Source::new(Path::new("/etc/corral/users.json"), None).expect("file");
        assert!(!f.is_object());
        for bad_url in [
            "s3://",
            "s3://bucket",
            "s3://bucket/",
            "s3:///key",
            "s3://b/dir/",
        ] {
            let e = Source::new(Path::new(bad_url), None).unwrap_err();
            assert!(e.to_string().contains("s3://BUCKET/KEY"), "{bad_url}: {e}");
        }
        let o = Source::new(Path::new("s3://bucket/conf/users.json"), None).expect("object");
        assert!(o.is_object());
        assert_eq!(o.name(), "s3://bucket/conf/users.json");
    }
}
