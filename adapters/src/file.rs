//! The File backend's own listing and multipart staging.
//!
//! **Listing** walks the directory itself instead of using
//! `LocalFileSystem::list`, which fails the whole listing on one file name it
//! cannot parse (measured: a file named `bad\nname` beside good ones makes
//! both `list` and `list_with_delimiter` return an error). Here such a name
//! is skipped and logged, as the domain hides such keys on S3. Directories are
//! reported as `d/` entries, as S3 reports markers, so that recursive
//! operations see empty directories too.
//!
//! **Multipart** stages each part beside the target as
//! `<target>#<upload id: 20 digits><part: 5 digits>`, and the upload itself as
//! part `00000`. Names ending in `#` and digits are `LocalFileSystem`'s own
//! staging names: it refuses them as object names and this listing skips
//! them, so staged parts are never visible. Completion concatenates the parts
//! into the `00000` file, syncs it and renames it over the target: readers see
//! the old file or the new one, never a mix.

use std::io::ErrorKind as IoKind;
use std::path::{Path as FsPath, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::SystemTime;

use bytes::Bytes;
use corral_domain::port::{
    CompletedPart, ListItem, ListOptions, ListStream, ObjectMeta, PutResult, UploadId,
};
use corral_domain::{Error, ErrorKind, ObjectKey, Operation, Result};

/// A File sandbox's directory.
#[derive(Debug, Clone)]
pub(crate) struct FileDir {
    root: PathBuf,
}

fn io_err(e: std::io::Error, op: Operation, key: &str) -> Error {
    let kind = match e.kind() {
        // A path through a file (`f/x` where `f` is a file) does not exist.
        IoKind::NotFound | IoKind::NotADirectory => ErrorKind::NotFound,
        IoKind::AlreadyExists => ErrorKind::AlreadyExists,
        IoKind::PermissionDenied => ErrorKind::PermissionDenied,
        IoKind::DirectoryNotEmpty => ErrorKind::Conflict,
        IoKind::StorageFull | IoKind::QuotaExceeded | IoKind::FileTooLarge => ErrorKind::TooLarge,
        _ => ErrorKind::Other,
    };
    Error::new(kind, e.to_string())
        .with_operation(op)
        .with_path(key.to_owned())
}

/// Refuses names the File backend reserves for staging (`…#digits`).
pub(crate) fn check_name(key: &ObjectKey) -> Result<()> {
    let name = key
        .as_str()
        .trim_end_matches('/')
        .rsplit('/')
        .next()
        .unwrap_or_default();
    if is_staging_name(name) {
        return Err(Error::invalid_input(format!(
            "{name:?}: on a File sandbox, names ending in `#` and digits are reserved for staging uploads; rename the file"
        ))
        .with_path(key.as_str().to_owned()));
    }
    Ok(())
}

/// Whether a file name is a staging name (`…#digits`).
fn is_staging_name(name: &str) -> bool {
    match name.rsplit_once('#') {
        Some((_, digits)) => !digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit()),
        None => false,
    }
}

fn upload_number(upload: &UploadId) -> Result<u64> {
    if upload.0.len() == 20
        && let Ok(n) = upload.0.parse::<u64>()
    {
        return Ok(n);
    }
    Err(
        Error::not_found(format!("no such multipart upload {:?}", upload.0))
            .with_operation(Operation::UploadPart),
    )
}

fn new_upload_number() -> u64 {
    // Unique per process by the counter, across processes by time and pid.
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let nanos = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or_default();
    let mixed = nanos
        ^ (u64::from(std::process::id()) << 40)
        ^ COUNTER
            .fetch_add(1, Ordering::Relaxed)
            .wrapping_mul(0x9E37_79B9_7F4A_7C15);
    mixed % 10_000_000_000_000_000_000
}

impl FileDir {
    /// The sandbox directory, which must exist.
    pub(crate) fn open(root: &FsPath) -> Result<Self> {
        match std::fs::metadata(root) {
            Ok(m) if m.is_dir() => Ok(Self {
                root: root.to_path_buf(),
            }),
            Ok(_) => Err(Error::invalid_input(format!(
                "File sandbox {} is not a directory",
                root.display()
            ))
            .with_operation(Operation::Configure)),
            Err(e) if e.kind() == IoKind::NotFound => Err(Error::not_found(format!(
                "File sandbox directory {} does not exist; create it first (corral does not create sandbox roots)",
                root.display()
            ))
            .with_operation(Operation::Configure)),
            Err(e) => Err(io_err(e, Operation::Configure, &root.display().to_string())),
        }
    }

    /// The root directory.
    pub(crate) fn root(&self) -> &FsPath {
        &self.root
    }

    fn fs_path(&self, key: &str) -> PathBuf {
        // Keys are validated by the domain and by `to_path`: no `..`, no empty segments.
        self.root.join(key.trim_end_matches('/'))
    }

    fn staged(&self, key: &ObjectKey, n: u64, part: u32) -> PathBuf {
        let target = self.fs_path(key.as_str());
        let mut name = target.file_name().unwrap_or_default().to_os_string();
        name.push(format!("#{n:020}{part:05}"));
        target.with_file_name(name)
    }

    pub(crate) async fn head_dir(&self, key: &ObjectKey) -> Result<ObjectMeta> {
        let m = tokio::fs::metadata(self.fs_path(key.as_str()))
            .await
            .map_err(|e| io_err(e, Operation::Head, key.as_str()))?;
        if !m.is_dir() {
            return Err(Error::not_found("not a directory")
                .with_operation(Operation::Head)
                .with_path(key.as_str().to_owned()));
        }
        Ok(ObjectMeta {
            key: key.clone(),
            size: 0,
            last_modified: m.modified().ok(),
            etag: None,
            checksum: None,
        })
    }

    pub(crate) async fn make_dir(&self, key: &ObjectKey) -> Result<()> {
        tokio::fs::create_dir_all(self.fs_path(key.as_str()))
            .await
            .map_err(|e| io_err(e, Operation::Put, key.as_str()))
    }

    pub(crate) async fn remove_dir(&self, key: &ObjectKey) -> Result<()> {
        match tokio::fs::remove_dir(self.fs_path(key.as_str())).await {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == IoKind::NotFound => Ok(()),
            Err(e) => Err(io_err(e, Operation::Delete, key.as_str())),
        }
    }

    pub(crate) fn list(&self, prefix: ObjectKey, opts: ListOptions) -> ListStream {
        let root = self.root.clone();
        let fut = async move {
            let items = tokio::task::spawn_blocking(move || walk(&root, prefix.as_str(), &opts))
                .await
                .map_err(|e| Error::new(ErrorKind::Other, format!("listing task failed: {e}")))??;
            Ok::<_, Error>(futures::stream::iter(items.into_iter().map(Ok)))
        };
        Box::pin(futures::TryStreamExt::try_flatten(futures::stream::once(
            fut,
        )))
    }

    pub(crate) async fn create_multipart(&self, key: &ObjectKey) -> Result<UploadId> {
        let n = new_upload_number();
        let marker = self.staged(key, n, 0);
        if let Some(parent) = marker.parent() {
            tokio::fs::create_dir_all(parent)
                .await
                .map_err(|e| io_err(e, Operation::CreateMultipart, key.as_str()))?;
        }
        tokio::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&marker)
            .await
            .map_err(|e| io_err(e, Operation::CreateMultipart, key.as_str()))?;
        Ok(UploadId(format!("{n:020}")))
    }

    async fn check_upload(&self, key: &ObjectKey, upload: &UploadId, op: Operation) -> Result<u64> {
        let n = upload_number(upload).map_err(|e| e.with_operation(op))?;
        match tokio::fs::metadata(self.staged(key, n, 0)).await {
            Ok(_) => Ok(n),
            Err(e) if e.kind() == IoKind::NotFound => Err(Error::not_found(format!(
                "no such multipart upload {upload} (completed or aborted already)"
            ))
            .with_operation(op)
            .with_path(key.as_str().to_owned())),
            Err(e) => Err(io_err(e, op, key.as_str())),
        }
    }

    pub(crate) async fn upload_part(
        &self,
        key: &ObjectKey,
        upload: &UploadId,
        number: u32,
        data: Bytes,
    ) -> Result<CompletedPart> {
        let n = self
            .check_upload(key, upload, Operation::UploadPart)
            .await?;
        let len = data.len();
        tokio::fs::write(self.staged(key, n, number), data)
            .await
            .map_err(|e| io_err(e, Operation::UploadPart, key.as_str()))?;
        Ok(CompletedPart {
            number,
            etag: format!("\"{number}-{len}\""),
        })
    }

    pub(crate) async fn complete_multipart(
        &self,
        key: &ObjectKey,
        upload: &UploadId,
        parts: u32,
    ) -> Result<PutResult> {
        let op = Operation::CompleteMultipart;
        let n = self.check_upload(key, upload, op).await?;
        let assembled = self.staged(key, n, 0);
        let part_paths: Vec<PathBuf> = (1..=parts).map(|p| self.staged(key, n, p)).collect();
        let target = self.fs_path(key.as_str());
        let (k, u) = (key.as_str().to_owned(), upload.to_string());
        // One blocking task: std::io::copy uses copy_file_range on Linux, so
        // the parts are concatenated inside the kernel.
        tokio::task::spawn_blocking(move || {
            let err = |e| io_err(e, op, &k);
            let mut out = std::fs::OpenOptions::new()
                .write(true)
                .truncate(true)
                .open(&assembled)
                .map_err(err)?;
            for (i, path) in part_paths.iter().enumerate() {
                let mut input = std::fs::File::open(path).map_err(|e| {
                    if e.kind() == IoKind::NotFound {
                        Error::invalid_input(format!(
                            "part {} of upload {u} was never uploaded",
                            i + 1
                        ))
                        .with_operation(op)
                        .with_path(k.clone())
                    } else {
                        err(e)
                    }
                })?;
                std::io::copy(&mut input, &mut out).map_err(err)?;
            }
            out.sync_all().map_err(err)?;
            drop(out);
            std::fs::rename(&assembled, &target).map_err(err)?;
            for path in &part_paths {
                let _ = std::fs::remove_file(path);
            }
            Ok::<_, Error>(())
        })
        .await
        .map_err(|e| {
            Error::new(
                ErrorKind::Other,
                format!("completing the upload failed: {e}"),
            )
        })??;
        Ok(PutResult::default())
    }

    pub(crate) async fn abort_multipart(&self, key: &ObjectKey, upload: &UploadId) -> Result<()> {
        let n = self
            .check_upload(key, upload, Operation::AbortMultipart)
            .await?;
        let target = self.fs_path(key.as_str());
        let dir = target.parent().unwrap_or(&self.root).to_path_buf();
        let mut stem = target.file_name().unwrap_or_default().to_os_string();
        stem.push(format!("#{n:020}"));
        let stem = stem.to_string_lossy().into_owned();
        let mut entries = tokio::fs::read_dir(&dir)
            .await
            .map_err(|e| io_err(e, Operation::AbortMultipart, key.as_str()))?;
        while let Ok(Some(entry)) = entries.next_entry().await {
            let name = entry.file_name();
            if name.to_string_lossy().starts_with(&stem) {
                let _ = tokio::fs::remove_file(entry.path()).await;
            }
        }
        Ok(())
    }
}

/// Lists `prefix` (`""` or ending in `/`) below `root`, sorted by key.
fn walk(root: &FsPath, prefix: &str, opts: &ListOptions) -> Result<Vec<ListItem>> {
    let start = root.join(prefix.trim_end_matches('/'));
    let mut out = Vec::new();
    let mut stack = vec![(start, prefix.to_owned())];
    while let Some((dir, key_prefix)) = stack.pop() {
        let entries = match std::fs::read_dir(&dir) {
            Ok(e) => e,
            Err(e) if e.kind() == IoKind::NotFound || e.kind() == IoKind::NotADirectory => continue,
            Err(e) => return Err(io_err(e, Operation::List, &key_prefix)),
        };
        for entry in entries {
            let entry = entry.map_err(|e| io_err(e, Operation::List, &key_prefix))?;
            let Ok(name) = entry.file_name().into_string() else {
                tracing::warn!(dir = %dir.display(), "skipping a file name that is not UTF-8");
                continue;
            };
            if is_staging_name(&name) {
                continue;
            }
            // Follows symlinks, as LocalFileSystem does for reads.
            let Ok(meta) = std::fs::metadata(entry.path()) else {
                continue;
            };
            let key = format!("{key_prefix}{name}");
            if meta.is_dir() {
                let dir_key = format!("{key}/");
                if opts.delimiter {
                    out.push(ListItem::Prefix(ObjectKey::from_raw(dir_key)));
                } else {
                    out.push(ListItem::Object(ObjectMeta {
                        key: ObjectKey::from_raw(dir_key.clone()),
                        size: 0,
                        last_modified: meta.modified().ok(),
                        etag: None,
                        checksum: None,
                    }));
                    stack.push((entry.path(), dir_key));
                }
            } else if meta.is_file() {
                out.push(ListItem::Object(ObjectMeta {
                    key: ObjectKey::from_raw(key),
                    size: meta.len(),
                    last_modified: meta.modified().ok(),
                    etag: None,
                    checksum: None,
                }));
            }
        }
    }
    if let Some(after) = &opts.start_after {
        out.retain(|i| i.key() > after);
    }
    out.sort_by(|a, b| a.key().cmp(b.key()));
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn staging_names() {
        assert!(is_staging_name("f#1"));
        assert!(is_staging_name("f#0000000000000000000100001"));
        assert!(!is_staging_name("f#"));
        assert!(!is_staging_name("f#1a"));
        assert!(!is_staging_name("f"));
    }

    #[test]
    fn upload_numbers_have_twenty_digits() {
        let a = new_upload_number();
        let b = new_upload_number();
        assert_ne!(a, b);
        assert_eq!(format!("{a:020}").len(), 20);
        assert!(upload_number(&UploadId("12".into())).is_err());
    }
}
