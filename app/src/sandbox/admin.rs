//! What an operator asks of a user's sandbox: whether each mount works
//! ([`UserSandbox::check`]), what each mount is, secrets masked
//! ([`UserSandbox::describe`]), the multipart uploads left pending in it
//! (by any tool; confined to the user's prefixes), the bucket rule that
//! aborts them, and the conformance suite against a mount.

use std::time::{Duration, SystemTime};

use corral_domain::mapping::ResolvedSpec;
use corral_domain::port::{PendingUpload, UploadId};
use corral_domain::{Error, ErrorKind, ObjectKey, ObjectStorage};
use futures::StreamExt;
use serde::Serialize;

use super::{Opened, UserSandbox};

/// What a mount is, as `corral mappings` shows it: secrets as `***`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct MountInfo {
    /// The mount point.
    pub mount: String,
    /// `File`, `S3`, `Memory` or `Custom`.
    #[serde(rename = "type")]
    pub kind: &'static str,
    /// A File sandbox's directory.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub directory: Option<String>,
    /// An S3 sandbox's bucket.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bucket: Option<String>,
    /// The key prefix of the user's sandbox.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub prefix: Option<String>,
    /// The region.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub region: Option<String>,
    /// The endpoint.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub endpoint: Option<String>,
    /// The access key id (not a secret).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub access_key_id: Option<String>,
    /// `***` when a secret key is configured.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub secret_key: Option<String>,
    /// `***` when a session token is configured.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub session_token: Option<String>,
    /// The proxy, without credentials.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub proxy: Option<String>,
    /// The proxy's user name.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub proxy_user_name: Option<String>,
    /// `***` when a proxy password is configured.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub proxy_password: Option<String>,
    /// Whether TLS certificates are verified.
    #[serde(rename = "verifySSL", skip_serializing_if = "Option::is_none")]
    pub verify_ssl: Option<bool>,
    /// The CA bundle.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ca_file: Option<String>,
    /// The CA directory.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ca_path: Option<String>,
}

impl MountInfo {
    fn of(point: String, spec: &ResolvedSpec) -> Self {
        let mut info = Self {
            mount: point,
            kind: spec.type_name(),
            directory: None,
            bucket: None,
            prefix: None,
            region: None,
            endpoint: None,
            access_key_id: None,
            secret_key: None,
            session_token: None,
            proxy: None,
            proxy_user_name: None,
            proxy_password: None,
            verify_ssl: None,
            ca_file: None,
            ca_path: None,
        };
        match spec {
            ResolvedSpec::File { dir, .. } => info.directory = Some(dir.clone()),
            ResolvedSpec::Memory { root } => info.prefix = Some(root.prefix().to_owned()),
            ResolvedSpec::S3 { spec, root } => {
                let creds = spec.credentials.as_ref();
                let proxy = spec.proxy.as_ref();
                info.bucket = Some(spec.bucket_name.clone());
                info.prefix = Some(root.prefix().to_owned());
                info.region = Some(spec.region.clone());
                info.endpoint = spec
                    .endpoint
                    .as_ref()
                    .map(|u| u.as_str().trim_end_matches('/').to_owned());
                info.access_key_id = creds.map(|c| c.access_key_id.clone());
                // Secret's Display is `***`.
                info.secret_key = creds.map(|c| c.secret_key.to_string());
                info.session_token =
                    creds.and_then(|c| c.session_token.as_ref().map(|t| t.to_string()));
                info.proxy = proxy.map(|p| format!("{}://{}:{}", p.scheme, p.host, p.port));
                info.proxy_user_name = proxy.and_then(|p| p.user_name.clone());
                info.proxy_password =
                    proxy.and_then(|p| p.password.as_ref().map(|s| s.to_string()));
                info.verify_ssl = Some(spec.verify_ssl);
                info.ca_file = spec.ca_file.clone();
                info.ca_path = spec.ca_path.clone();
            }
            ResolvedSpec::Custom { root, .. } => info.prefix = Some(root.prefix().to_owned()),
            _ => {}
        }
        info
    }
}

/// How one mount answered [`UserSandbox::check`].
#[derive(Debug)]
pub struct MountCheck {
    /// The mount point.
    pub mount: String,
    /// Its type.
    pub kind: &'static str,
    /// `None` if it works.
    pub error: Option<Error>,
}

/// A multipart upload left pending in the user's sandbox.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PendingUploadInfo {
    /// The user's path it would create.
    pub path: String,
    /// Its id.
    pub upload_id: String,
    /// Seconds since it started, if the server says.
    pub age_seconds: Option<u64>,
    /// The user whose sandbox holds it.
    pub owner: String,
    /// The bytes its stored parts hold, and how many parts (ListParts);
    /// `None` where the backend cannot say.
    pub stored_bytes: Option<u64>,
    /// How many parts are stored.
    pub parts: Option<u32>,
}

/// Which pending uploads to abort.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AbortWhich {
    /// Every one.
    All,
    /// Those started longer ago than this.
    OlderThan(Duration),
    /// One, by id.
    Id(String),
}

fn age(u: &PendingUpload) -> Option<Duration> {
    u.initiated
        .and_then(|t| SystemTime::now().duration_since(t).ok())
}

impl UserSandbox {
    /// Each mount as configured, secrets as `***`. Connects to nothing.
    pub fn describe(&self) -> Vec<MountInfo> {
        self.view()
            .mounts()
            .iter()
            .map(|m| MountInfo::of(m.point.to_string(), &m.spec))
            .collect()
    }

    /// Connects to each mount (a listing reaches the bucket itself: a
    /// missing bucket, bad credentials), and with `write`, writes, reads back
    /// and deletes a probe object.
    pub async fn check(&self, write: bool) -> Vec<MountCheck> {
        let mut out = Vec::new();
        for m in self.view().mounts() {
            let point = m.point.to_string();
            let result = async {
                if let Some(Err(e)) = self.list(&point).next().await {
                    return Err(e);
                }
                if write {
                    let probe = m
                        .point
                        .join(&format!(".corral-check-{}", std::process::id()))?
                        .to_string();
                    self.write(&probe, b"corral check", None).await?;
                    let back = self.read(&probe).await;
                    self.remove(&probe, super::tree::RemoveOptions::default())
                        .await?;
                    if back?.as_ref() != b"corral check" {
                        return Err(Error::new(
                            ErrorKind::InvalidResponse,
                            "the probe object read back differs",
                        ));
                    }
                }
                Ok(())
            }
            .await;
            out.push(MountCheck {
                mount: point,
                kind: m.spec.type_name(),
                error: result.err(),
            });
        }
        out
    }

    /// The opened mounts where a multipart upload can outlive its process
    /// (S3; a File or Memory upload lives and dies with it). Listing their
    /// pending uploads fails where the server cannot.
    fn upload_mounts(&self) -> impl Iterator<Item = &Opened> + '_ {
        self.opened().filter_map(Result::ok).filter(|o| {
            let caps = o.storage.capabilities();
            caps.multipart && (caps.list_pending_uploads || caps.resume)
        })
    }

    /// Multipart uploads pending under the user's prefixes, by any tool;
    /// with `older_than`, only those started longer ago.
    pub async fn pending_uploads(
        &self,
        older_than: Option<Duration>,
    ) -> Result<Vec<PendingUploadInfo>, Error> {
        let mut rows = Vec::new();
        for o in self.upload_mounts() {
            for u in o.pending().await? {
                if older_than.is_some_and(|min| age(&u).is_none_or(|a| a < min)) {
                    continue;
                }
                let stored = o.storage.list_parts(&u.key, &u.upload_id).await.ok();
                rows.push(PendingUploadInfo {
                    path: o.storage.user_path(u.key.as_str()).to_string(),
                    upload_id: u.upload_id.0.clone(),
                    age_seconds: age(&u).map(|a| a.as_secs()),
                    owner: self.view.identity().user.clone(),
                    stored_bytes: stored.as_ref().map(|p| p.iter().map(|p| p.size).sum()),
                    parts: stored.as_ref().map(|p| p.len() as u32),
                });
            }
        }
        Ok(rows)
    }

    /// Aborts pending uploads in the user's sandbox; returns how many.
    pub async fn abort_pending_uploads(&self, which: &AbortWhich) -> Result<u64, Error> {
        let mut aborted = 0;
        for o in self.upload_mounts() {
            for u in o.pending().await? {
                let chosen = match which {
                    AbortWhich::All => true,
                    AbortWhich::Id(id) => *id == u.upload_id.0,
                    AbortWhich::OlderThan(min) => age(&u).is_some_and(|a| a >= *min),
                };
                if chosen {
                    o.storage.abort_multipart(&u.key, &u.upload_id).await?;
                    aborted += 1;
                }
            }
        }
        if let AbortWhich::Id(id) = which
            && aborted == 0
        {
            return Err(Error::not_found(format!(
                "no pending upload {id} in your sandbox"
            )));
        }
        Ok(aborted)
    }

    /// Installs, on the bucket of each S3 mount, the rule that aborts
    /// incomplete multipart uploads `days` after they start (refusing to
    /// replace existing rules unless `replace`). Returns the mount points.
    pub async fn set_upload_expiry(&self, days: u32, replace: bool) -> Result<Vec<String>, Error> {
        let mounts: Vec<&Opened> = self.upload_mounts().collect();
        if mounts.is_empty() {
            return Err(Error::unsupported("no mount of this user is on S3"));
        }
        let mut done = Vec::new();
        for o in mounts {
            o.storage.set_upload_expiry(days, replace).await?;
            done.push(o.point.to_string());
        }
        Ok(done)
    }

    /// Aborts upload `id` of `key` (a key of the mount at `mount`), as a
    /// journal recorded it; `Ok` if it is gone already.
    pub(crate) async fn abort_recorded(
        &self,
        mount: &str,
        key: &str,
        id: &str,
    ) -> Result<(), Error> {
        let o = self
            .opened()
            .filter_map(Result::ok)
            .find(|o| o.point.to_string() == mount)
            .ok_or_else(|| {
                Error::not_found(format!("{mount} is not a mount point of this user"))
            })?;
        match o
            .storage
            .abort_multipart(&ObjectKey::from_raw(key), &UploadId(id.to_owned()))
            .await
        {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == ErrorKind::NotFound => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// Runs the conformance suite against the mount at `mount` (default: the
    /// first), in a random directory below the user's prefix, which it removes.
    pub async fn conformance(
        &self,
        mount: Option<&str>,
    ) -> Result<corral_conformance::Report, Error> {
        let o = match mount {
            Some(m) => {
                let vp = super::parse(m)?;
                self.opened()
                    .zip(self.view().mounts())
                    .find(|(_, v)| v.point == vp)
                    .ok_or_else(|| {
                        Error::not_found(format!("{vp} is not a mount point of this user"))
                    })?
                    .0?
            }
            None => self
                .opened()
                .next()
                .ok_or_else(|| Error::not_found("the user has no mount"))??,
        };
        let storage = std::sync::Arc::clone(o.storage.inner());
        let name = format!("{} mount {}", storage.capabilities().name, o.point);
        let target = corral_conformance::Target::new(name, storage).with_base(o.root.prefix());
        Ok(corral_conformance::run(&target).await)
    }
}

impl Opened {
    /// The pending uploads under this mount's prefix that lie inside it.
    async fn pending(&self) -> Result<Vec<PendingUpload>, Error> {
        let pending = self
            .storage
            .list_pending_uploads(&ObjectKey::from_raw(self.root.prefix()))
            .await?;
        // Only what lies inside this user's sandbox: the prefix `al/`
        // lists `al/…`, never `alice/…`, but a server may say otherwise.
        Ok(pending
            .into_iter()
            .filter(|u| self.root.entry_for(u.key.as_str()).is_some())
            .collect())
    }
}
