//! One upload from a local file, with its journal entry where the backend
//! can resume ([`corral_domain::Capabilities::resume`]): resumed after
//! checking the source, or aborted; and the sweep of entries that earlier
//! processes left behind.

use std::collections::BTreeSet;
use std::path::Path;
use std::time::Duration;

use corral_domain::port::UploadId;
use corral_domain::{Error, ErrorKind, OverwriteMode, VirtualPath};
use tokio::io::{AsyncReadExt, AsyncSeekExt};

use super::Progress;
use crate::cache::part_checksum;
use crate::journal::{EntryGuard, Journal, JournalEntry, SourceId};
use crate::sandbox::write::Writer;
use crate::sandbox::{FileKey, SandboxPath, UserSandbox};

/// An error about a local file.
pub(super) fn local_err(path: &Path, what: &str, e: std::io::Error) -> Error {
    Error::new(
        ErrorKind::from_io(e.kind()),
        format!("{what} {}: {e}", path.display()),
    )
}

/// The journal of a copy: where entries go, and whether to resume.
#[derive(Debug)]
pub(super) struct Resumable {
    pub(super) journal: Journal,
    pub(super) resume: bool,
}

/// What one upload did.
pub(super) struct Uploaded {
    pub(super) size: u64,
    pub(super) sent: u64,
    pub(super) notice: Option<String>,
}

/// Aborts the upload of `entry`; false (having said why) if it is still pending.
async fn abort_entry(sb: &UserSandbox, entry: &JournalEntry, progress: &dyn Progress) -> bool {
    match sb
        .abort_recorded(&entry.mount, &entry.key, &entry.upload_id)
        .await
    {
        Ok(()) => true,
        Err(e) => {
            progress.notice(&format!(
                "could not abort upload {} of {}: {e} (`corral uploads abort` removes it)",
                entry.upload_id, entry.path
            ));
            false
        }
    }
}

/// Aborts the uploads of entries whose process is gone and that are older
/// than `stale_after` or were abandoned (their abort failed; a `--resume` run
/// leaves those to the copy of their file), and removes the entries; says
/// what it did.
pub(super) async fn sweep_stale(
    sb: &UserSandbox,
    journal: &Journal,
    stale_after: Duration,
    resume: bool,
    progress: &dyn Progress,
) {
    for (path, entry) in journal.entries() {
        let alive =
            entry.pid != std::process::id() && Path::new(&format!("/proc/{}", entry.pid)).exists();
        let stale = entry.age_secs() >= stale_after.as_secs() || (entry.abandoned && !resume);
        if entry.upload_id.is_empty() || alive || !stale {
            continue;
        }
        match entry
            .path
            .as_str()
            .to_virtual()
            .and_then(|p| sb.file_key(&p))
        {
            Ok(f) if f.key == entry.key => {
                if !abort_entry(sb, &entry, progress).await {
                    continue; // kept for the next run
                }
                Journal::remove(&path);
                progress.notice(&format!(
                    "aborted the interrupted upload of {} ({} of its parts were sent, {} s ago)",
                    entry.path,
                    entry.parts.len(),
                    entry.age_secs()
                ));
            }
            _ => {
                tracing::warn!(path = %entry.path, "a journal entry no longer matches the mappings; left as is")
            }
        }
    }
}

/// Why a journal entry no longer matches its source, if it does not.
async fn verify_source(entry: &JournalEntry, now: &SourceId, local: &Path) -> Result<(), String> {
    if entry.source.size != now.size {
        return Err(format!(
            "the source's size changed ({} -> {} bytes)",
            entry.source.size, now.size
        ));
    }
    if entry.source.mtime_ns != now.mtime_ns {
        return Err("the source was modified since the upload started".to_owned());
    }
    let (local, parts, part_size, size) = (
        local.to_path_buf(),
        entry.parts.clone(),
        entry.part_size,
        now.size,
    );
    tokio::task::spawn_blocking(move || {
        let f = std::fs::File::open(&local).map_err(|e| format!("cannot read the source: {e}"))?;
        for p in parts {
            let start = (u64::from(p.number) - 1) * part_size;
            let len = part_size.min(size.saturating_sub(start)) as usize;
            let mut buf = vec![0u8; len];
            std::os::unix::fs::FileExt::read_exact_at(&f, &mut buf, start)
                .map_err(|e| format!("cannot read the source: {e}"))?;
            if part_checksum(&buf) != p.crc64 {
                return Err(format!(
                    "part {} of the source no longer matches what was sent",
                    p.number
                ));
            }
        }
        Ok(())
    })
    .await
    .map_err(|e| e.to_string())?
}

/// A writer for `target`, resuming the journal's upload of `source` where
/// there is one and a resume was asked, with the guard of its journal entry.
#[expect(
    clippy::too_many_arguments,
    reason = "upload_file's arguments, passed through"
)]
async fn journaled_writer(
    sb: &UserSandbox,
    jr: &Resumable,
    local: &Path,
    source: &SourceId,
    target: &VirtualPath,
    mode: Option<OverwriteMode>,
    progress: &dyn Progress,
    listed_not_dir: bool,
) -> Result<(Writer, Option<String>, EntryGuard), Error> {
    let FileKey { key, mount, .. } = sb.file_key(target)?;
    let size = source.size;
    let path = jr.journal.path_for(&mount, &key, &source.path);
    let mut resumed = None;
    if let Some(entry) = Journal::load(&path).filter(|e| !e.upload_id.is_empty()) {
        if jr.resume {
            match verify_source(&entry, source, local).await {
                Ok(()) => resumed = Some(entry),
                Err(why) => {
                    progress.notice(&format!("{target}: restarting the upload from zero: {why}"));
                    abort_entry(sb, &entry, progress).await;
                    Journal::remove(&path);
                }
            }
        } else {
            abort_entry(sb, &entry, progress).await;
            Journal::remove(&path);
            progress.notice(&format!(
                "aborted the interrupted upload of {target} (cp --resume continues one)"
            ));
        }
    }
    let guard = EntryGuard::new(path.clone());
    match resumed {
        Some(mut entry) => {
            // Being continued by this process, it is no longer abandoned, nor
            // stale for a concurrent run's sweep.
            entry.abandoned = false;
            entry.pid = std::process::id();
            Journal::write(&path, &entry)?;
            progress.notice(&format!(
                "{target}: resuming the upload: {} of {} parts are on the server",
                entry.parts.len(),
                size.div_ceil(entry.part_size)
            ));
            let mut w = sb
                .resume(
                    target,
                    size,
                    entry.part_size,
                    UploadId(entry.upload_id.clone()),
                    entry.completed(),
                )
                .await?;
            w.set_journal(Box::new(guard.writer(entry)));
            Ok((w, None, guard))
        }
        None => {
            let mut w = sb
                .create_checked(
                    target,
                    crate::sandbox::write::WriteOptions {
                        size: Some(size),
                        overwrite: mode,
                        ..Default::default()
                    },
                    listed_not_dir,
                )
                .await?;
            let notice = w.decision().notice();
            let entry = JournalEntry {
                version: 1,
                mount,
                path: target.to_string(),
                key,
                upload_id: String::new(),
                part_size: w.part_size(),
                source: source.clone(),
                parts: Vec::new(),
                started: 0,
                pid: std::process::id(),
                abandoned: false,
            };
            w.set_journal(Box::new(guard.writer(entry)));
            Ok((w, notice, guard))
        }
    }
}

/// Uploads `local` to `target`.
pub(super) async fn upload_file(
    sb: &UserSandbox,
    local: &Path,
    target: &VirtualPath,
    mode: Option<OverwriteMode>,
    journal: Option<&Resumable>,
    progress: &dyn Progress,
    listed_not_dir: bool,
) -> Result<Uploaded, Error> {
    let source = SourceId::of(local).map_err(|e| local_err(local, "cannot read", e))?;
    let size = source.size;
    let resumable = sb.file_key(target)?.resumable;
    // The guard outlives the writer, whose journal it removes when done.
    let (mut writer, notice, guard) = match journal.filter(|_| resumable) {
        None => {
            let w = sb
                .create_checked(
                    target,
                    crate::sandbox::write::WriteOptions {
                        size: Some(size),
                        overwrite: mode,
                        ..Default::default()
                    },
                    listed_not_dir,
                )
                .await?;
            let notice = w.decision().notice();
            (w, notice, None)
        }
        Some(jr) => {
            let (w, notice, guard) = journaled_writer(
                sb,
                jr,
                local,
                &source,
                target,
                mode,
                progress,
                listed_not_dir,
            )
            .await?;
            (w, notice, Some(guard))
        }
    };
    let part = writer.part_size();
    let done: BTreeSet<u64> = writer.parts_sent().into_iter().collect();
    let mut sent = 0u64;
    let sending = async {
        let mut file = tokio::fs::File::open(local)
            .await
            .map_err(|e| local_err(local, "cannot read", e))?;
        // Reads of at most one default part: fewer trips through the blocking pool.
        let mut buf = vec![0u8; (8 << 20).min(size.max(1) as usize)];
        for n in 1..=size.div_ceil(part) {
            let (start, end) = ((n - 1) * part, (n * part).min(size));
            if done.contains(&n) {
                progress.advance(end - start);
                continue;
            }
            file.seek(std::io::SeekFrom::Start(start))
                .await
                .map_err(|e| local_err(local, "cannot read", e))?;
            let mut at = start;
            while at < end {
                let want = buf.len().min((end - at) as usize);
                let n = file
                    .read(&mut buf[..want])
                    .await
                    .map_err(|e| local_err(local, "cannot read", e))?;
                if n == 0 {
                    return Err(Error::new(
                        ErrorKind::Conflict,
                        format!(
                            "{} changed size while it was read ({size} -> {at} bytes)",
                            local.display()
                        ),
                    ));
                }
                writer.write_at(at, &buf[..n]).await?;
                at += n as u64;
                sent += n as u64;
                progress.advance(n as u64);
            }
        }
        Ok(())
    };
    if let Err(e) = sending.await {
        return Err(writer.cancel(e).await);
    }
    writer.finish().await?;
    drop(guard);
    Ok(Uploaded { size, sent, notice })
}
