//! The journal of in-flight S3 uploads, so that an interrupted `cp` can
//! resume and nothing is left pending on the server.
//!
//! One JSON file per upload in the state directory (`--state-dir`, default
//! `$XDG_STATE_HOME/corral` or `~/.local/state/corral`), per user. It holds
//! the mount and key, the upload id and part size, every completed part with
//! its ETag and the CRC-64 of its bytes, and the source's identity (path,
//! size, modification time). It is rewritten atomically (a temporary file,
//! synced, renamed, and the directory synced) each time a part completes, by
//! a thread of its own so that syncing never slows the transfer.
//!
//! A transfer that ends — done, failed, or cancelled (Ctrl-C) — removes its
//! entry, having completed or aborted the upload. Two kinds of entry stay
//! behind: that of a process that was killed, and that of an upload whose
//! abort failed (marked `abandoned`). The next run finds them: `cp --resume`
//! continues one after checking the source (size, time, and the checksum of
//! every completed part, read again); without `--resume`, abandoned entries
//! and entries older than `--stale-after` are aborted and reported.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use corral_domain::port::{CompletedPart, UploadId};
use corral_domain::{Error, ErrorKind};
use serde::{Deserialize, Serialize};

use crate::cache::UploadJournal;

/// The local file an upload reads.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SourceId {
    /// Its path, absolute.
    pub path: String,
    /// Its size in bytes.
    pub size: u64,
    /// Its modification time, in nanoseconds since the epoch.
    pub mtime_ns: u128,
}

impl SourceId {
    /// The identity of a local file now.
    pub fn of(path: &Path) -> std::io::Result<Self> {
        let meta = std::fs::metadata(path)?;
        let mtime_ns = meta
            .modified()?
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0);
        Ok(Self {
            path: std::path::absolute(path)?.display().to_string(),
            size: meta.len(),
            mtime_ns,
        })
    }
}

/// A part on the server.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JournalPart {
    /// 1-based part number.
    pub number: u32,
    /// The server's ETag for it.
    pub etag: String,
    /// CRC-64/NVME of its bytes.
    pub crc64: u64,
}

/// One upload in flight.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JournalEntry {
    /// The format version.
    pub version: u32,
    /// The mount point the target is under.
    pub mount: String,
    /// The target's path in the user's view.
    pub path: String,
    /// The object key.
    pub key: String,
    /// The multipart upload's id (empty until created).
    pub upload_id: String,
    /// The part size.
    pub part_size: u64,
    /// The source.
    pub source: SourceId,
    /// Parts completed, in completion order.
    pub parts: Vec<JournalPart>,
    /// When the upload started (seconds since the epoch).
    pub started: u64,
    /// The process that wrote it.
    pub pid: u32,
    /// The upload failed and its abort failed too: the next run aborts it.
    #[serde(default)]
    pub abandoned: bool,
}

impl JournalEntry {
    /// The parts as the port wants them to complete the upload.
    pub fn completed(&self) -> Vec<CompletedPart> {
        self.parts
            .iter()
            .map(|p| CompletedPart {
                number: p.number,
                etag: p.etag.clone(),
            })
            .collect()
    }

    /// Seconds since the upload started.
    pub fn age_secs(&self) -> u64 {
        now().saturating_sub(self.started)
    }
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

fn io_error(what: &str, path: &Path, e: std::io::Error) -> Error {
    Error::new(
        ErrorKind::Other,
        format!("journal: {what} {}: {e}", path.display()),
    )
}

/// A user's journal directory.
#[derive(Debug, Clone)]
pub struct Journal {
    dir: PathBuf,
}

impl Journal {
    /// The default state directory: `$XDG_STATE_HOME/corral`, else `~/.local/state/corral`.
    pub fn default_dir() -> PathBuf {
        if let Some(d) = std::env::var_os("XDG_STATE_HOME").filter(|d| !d.is_empty()) {
            return PathBuf::from(d).join("corral");
        }
        let home = std::env::var_os("HOME")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from("."));
        home.join(".local/state/corral")
    }

    /// Opens (creating, private to the OS user) `state_dir/uploads/<user>`.
    pub fn open(state_dir: &Path, user: &str) -> Result<Self, Error> {
        // The user name was validated by the mappings only if used: keep it one safe segment here.
        let safe: String = user
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || "-_.@".contains(c) {
                    c
                } else {
                    '_'
                }
            })
            .collect();
        let dir = state_dir
            .join("uploads")
            .join(if safe.is_empty() || safe.starts_with('.') {
                format!("_{safe}")
            } else {
                safe
            });
        std::fs::create_dir_all(&dir).map_err(|e| io_error("cannot create", &dir, e))?;
        use std::os::unix::fs::PermissionsExt;
        let _ = std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700));
        Ok(Self { dir })
    }

    /// The entry file of an upload of `source` to `key` under `mount`.
    pub fn path_for(&self, mount: &str, key: &str, source: &str) -> PathBuf {
        let id = crate::cache::part_checksum(format!("{mount}\n{key}\n{source}").as_bytes());
        self.dir.join(format!("{id:016x}.json"))
    }

    /// Every entry, with its file. Unreadable files are skipped with a warning.
    pub fn entries(&self) -> Vec<(PathBuf, JournalEntry)> {
        let Ok(dir) = std::fs::read_dir(&self.dir) else {
            return Vec::new();
        };
        let mut out = Vec::new();
        for e in dir.filter_map(Result::ok) {
            let path = e.path();
            if path.extension().is_some_and(|x| x == "json") {
                match Self::load(&path) {
                    Some(entry) => out.push((path, entry)),
                    None => {
                        tracing::warn!(path = %path.display(), "skipping an unreadable journal entry")
                    }
                }
            }
        }
        out.sort_by(|a, b| a.0.cmp(&b.0));
        out
    }

    /// The entry in `path`, if any.
    pub fn load(path: &Path) -> Option<JournalEntry> {
        let text = std::fs::read_to_string(path).ok()?;
        serde_json::from_str(&text).ok()
    }

    /// Writes `entry` to `path` atomically and durably.
    pub fn write(path: &Path, entry: &JournalEntry) -> Result<(), Error> {
        let text = serde_json::to_vec_pretty(entry)
            .map_err(|e| Error::new(ErrorKind::Other, e.to_string()))?;
        let temp = path.with_extension(format!("tmp{}", std::process::id()));
        let mut f = std::fs::File::create(&temp).map_err(|e| io_error("cannot write", &temp, e))?;
        f.write_all(&text)
            .map_err(|e| io_error("cannot write", &temp, e))?;
        f.sync_all()
            .map_err(|e| io_error("cannot sync", &temp, e))?;
        drop(f);
        std::fs::rename(&temp, path).map_err(|e| io_error("cannot rename", &temp, e))?;
        if let Some(dir) = path.parent()
            && let Ok(d) = std::fs::File::open(dir)
        {
            let _ = d.sync_all();
        }
        Ok(())
    }

    /// Removes the entry in `path` (a missing one is fine).
    pub fn remove(path: &Path) {
        let _ = std::fs::remove_file(path);
    }
}

/// Keeps one entry up to date as an upload progresses. The writes (each
/// atomic and synced) happen on a thread of their own, so that a slow disk
/// never holds the transfer back: updates that pile up are coalesced into
/// the latest. Dropping the writer waits for the last write, so that its
/// [`EntryGuard`] dropped afterwards removes the final state.
#[derive(Debug)]
pub struct EntryWriter {
    path: PathBuf,
    entry: JournalEntry,
    kept: Arc<Mutex<bool>>,
    tx: Option<std::sync::mpsc::Sender<JournalEntry>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl EntryWriter {
    fn new(path: PathBuf, entry: JournalEntry, kept: Arc<Mutex<bool>>) -> Self {
        let (tx, rx) = std::sync::mpsc::channel::<JournalEntry>();
        let thread = std::thread::spawn({
            let path = path.clone();
            move || {
                while let Ok(mut latest) = rx.recv() {
                    while let Ok(newer) = rx.try_recv() {
                        latest = newer;
                    }
                    if let Err(e) = Journal::write(&path, &latest) {
                        // The transfer goes on; only its resumability is lost.
                        tracing::warn!(error = %e, "cannot record the upload's progress");
                    }
                }
            }
        });
        Self {
            path,
            entry,
            kept,
            tx: Some(tx),
            thread: Some(thread),
        }
    }

    fn save(&self) {
        if let Some(tx) = &self.tx {
            let _ = tx.send(self.entry.clone());
        }
    }

    /// Waits for the writes sent so far.
    fn flush(&mut self) {
        self.tx.take();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for EntryWriter {
    fn drop(&mut self) {
        self.flush();
    }
}

impl UploadJournal for EntryWriter {
    fn started(&mut self, upload: &UploadId, part_size: u64) {
        self.entry.upload_id = upload.0.clone();
        self.entry.part_size = part_size;
        self.entry.started = now();
        self.save();
    }

    fn part_done(&mut self, part: &CompletedPart, crc64: u64) {
        self.entry.parts.push(JournalPart {
            number: part.number,
            etag: part.etag.clone(),
            crc64,
        });
        self.save();
    }

    fn left_pending(&mut self, _error: &Error) {
        // After the writes in flight, and under the guard's lock, so that
        // neither an older state nor the guard's removal undoes this one.
        self.flush();
        self.entry.abandoned = true;
        let mut kept = self.kept.lock().unwrap_or_else(|p| p.into_inner());
        *kept = true;
        if let Err(e) = Journal::write(&self.path, &self.entry) {
            tracing::warn!(error = %e, upload = %self.entry.upload_id, "cannot record an upload left pending");
        }
    }
}

/// Removes an entry when dropped — after the upload completed, failed or was
/// cancelled (it was then completed or aborted) — unless its writer said the
/// upload was left pending. A killed process runs no destructor, which is
/// the other way an entry stays for the next run.
#[derive(Debug)]
pub struct EntryGuard {
    path: PathBuf,
    kept: Arc<Mutex<bool>>,
}

impl EntryGuard {
    /// Guards the entry in `path`.
    pub fn new(path: PathBuf) -> Self {
        Self {
            path,
            kept: Arc::new(Mutex::new(false)),
        }
    }

    /// A writer keeping `entry` (a new upload's, written when the multipart
    /// upload is created, or a resumed one's, already written) up to date.
    pub fn writer(&self, entry: JournalEntry) -> EntryWriter {
        EntryWriter::new(self.path.clone(), entry, Arc::clone(&self.kept))
    }
}

impl Drop for EntryGuard {
    fn drop(&mut self) {
        let kept = self.kept.lock().unwrap_or_else(|p| p.into_inner());
        if !*kept {
            Journal::remove(&self.path);
        }
    }
}
