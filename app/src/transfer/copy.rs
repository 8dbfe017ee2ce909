//! The plan of a copy (which file goes where) and its run.

use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use corral_domain::listing::{DirEntry, EntryKind};
use corral_domain::{Error, ErrorKind, VirtualPath};
use futures::{StreamExt, TryStreamExt};

use super::upload::{Resumable, local_err, sweep_stale, upload_file};
use super::verify::verify_copy;
use super::{CopyOptions, CopySummary, Location, Progress};
use crate::cache::Download;
use crate::journal::Journal;
use crate::sandbox::UserSandbox;
use crate::sandbox::write::MkdirOptions;

/// Whether the sandbox side of a job was seen in a listing of its
/// directory (a file, or no directory of that name), which saves a lookup
/// per file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Listed {
    Yes,
    No,
}

/// One file to move, and where, with its size.
enum Job {
    Upload {
        local: PathBuf,
        target: VirtualPath,
        size: u64,
        listed: Listed,
    },
    Download {
        source: VirtualPath,
        local: PathBuf,
        size: u64,
        listed: Listed,
        /// Opened already (its HEAD done) when the source was looked up.
        opened: Option<Box<Download>>,
    },
}

impl Job {
    fn size(&self) -> u64 {
        match self {
            Self::Upload { size, .. } | Self::Download { size, .. } => *size,
        }
    }
}

const PARENTS: MkdirOptions = MkdirOptions { parents: true };

/// The files below local directory `dir`, to upload below `target`, whose
/// directories are made as they are found, then listed once each (not one
/// lookup per file) for directories that a file would clash with. Links are
/// not followed: one could lead anywhere, or back up the tree.
async fn walk_local(
    sb: &UserSandbox,
    dir: &Path,
    target: &VirtualPath,
    jobs: &mut Vec<Job>,
) -> Result<(), Error> {
    sb.mkdir(target, PARENTS).await?;
    let mut stack = vec![(dir.to_path_buf(), target.clone())];
    while let Some((d, t)) = stack.pop() {
        let dirs: std::collections::HashSet<String> = sb
            .list(&t)
            .try_filter_map(|e| async move { Ok(e.is_dir().then_some(e.name)) })
            .try_collect()
            .await?;
        let mut entries: Vec<_> = std::fs::read_dir(&d)
            .map_err(|e| local_err(&d, "cannot read directory", e))?
            .filter_map(Result::ok)
            .collect();
        entries.sort_by_key(|e| e.file_name());
        for entry in entries {
            let Ok(name) = entry.file_name().into_string() else {
                tracing::warn!(path = %entry.path().display(), "skipping a file name that is not UTF-8");
                continue;
            };
            let path = entry.path();
            let child = t.join(&name).map_err(Error::from)?;
            let meta =
                std::fs::symlink_metadata(&path).map_err(|e| local_err(&path, "cannot read", e))?;
            if meta.is_dir() {
                sb.mkdir(&child, PARENTS).await?;
                stack.push((path, child));
            } else if meta.is_file() {
                let listed = if dirs.contains(&name) {
                    Listed::No
                } else {
                    Listed::Yes
                };
                jobs.push(Job::Upload {
                    local: path,
                    target: child,
                    size: meta.len(),
                    listed,
                });
            } else {
                tracing::warn!(path = %path.display(), "skipping a link or special file");
            }
        }
    }
    Ok(())
}

/// The files below sandbox directory `dir`, to download below `target`,
/// whose directories are made as they are found.
async fn walk_sandbox(
    sb: &UserSandbox,
    dir: &VirtualPath,
    target: &Path,
    jobs: &mut Vec<Job>,
) -> Result<(), Error> {
    let mut stack = vec![(dir.clone(), target.to_path_buf())];
    while let Some((d, t)) = stack.pop() {
        std::fs::create_dir_all(&t).map_err(|e| local_err(&t, "cannot create directory", e))?;
        let entries: Vec<DirEntry> = sb.list(&d).try_collect().await?;
        for e in entries {
            let child = d.join(&e.name).map_err(Error::from)?;
            if e.is_dir() {
                stack.push((child, t.join(&e.name)));
            } else {
                jobs.push(Job::Download {
                    source: child,
                    local: t.join(&e.name),
                    size: e.size,
                    listed: Listed::Yes,
                    opened: None,
                });
            }
        }
    }
    Ok(())
}

impl UserSandbox {
    /// Copies `sources` to `dst`: local files up, sandbox files down, or
    /// sandbox files inside the sandbox (server-side where the backend can).
    /// A destination that ends in `/` or names a directory is one to copy
    /// into. See the [module docs](crate::transfer).
    pub async fn copy_paths(
        &self,
        sources: &[Location],
        dst: &Location,
        options: &CopyOptions,
        progress: &dyn Progress,
    ) -> Result<CopySummary, Error> {
        let started = Instant::now();
        let journal = match &options.journal_dir {
            Some(dir) => Some(Resumable {
                journal: Journal::open(dir, &self.view().identity().user)?,
                resume: options.resume,
            }),
            None => None,
        };
        if let Some(jr) = &journal {
            sweep_stale(self, &jr.journal, options.stale_after, jr.resume, progress).await;
        }
        let dst_is_dir = match dst {
            Location::Sandbox { path, into } => *into || self.is_dir(path).await.unwrap_or(false),
            Location::Local(p) => p.to_string_lossy().ends_with('/') || p.is_dir(),
        };
        if sources.len() > 1 && !dst_is_dir {
            return Err(Error::invalid_input(format!(
                "copying several sources needs a directory as destination; {} is not one",
                dst.shown()
            )));
        }
        let mut jobs = Vec::new();
        let mut within = CopySummary::default();
        let directory = |src: &Location| {
            Error::new(
                ErrorKind::IsADirectory,
                format!("{} is a directory (copy it recursively)", src.shown()),
            )
            .with_setting("recursive")
        };
        let into = |d: &VirtualPath, name: &str| -> Result<VirtualPath, Error> {
            if dst_is_dir {
                Ok(d.join(name)?)
            } else {
                Ok(d.clone())
            }
        };
        for src in sources {
            let name = src.base_name();
            match (src, dst) {
                (Location::Local(_), Location::Local(_)) => {
                    return Err(Error::invalid_input(
                        "one side of a copy must be a sandbox path (corral:/PATH)",
                    ));
                }
                (Location::Sandbox { path: s, .. }, Location::Sandbox { path: d, .. }) => {
                    let target = into(d, &name)?;
                    let copied = self
                        .copy(
                            s,
                            &target,
                            crate::sandbox::tree::TreeCopyOptions {
                                recursive: options.recursive,
                            },
                        )
                        .await?;
                    within.files += copied.files;
                    within.bytes += copied.bytes;
                }
                (Location::Local(local), Location::Sandbox { path: d, .. }) => {
                    let target = into(d, &name)?;
                    let meta =
                        std::fs::metadata(local).map_err(|e| local_err(local, "cannot read", e))?;
                    if meta.is_dir() {
                        if !options.recursive {
                            return Err(directory(src));
                        }
                        walk_local(self, local, &target, &mut jobs).await?;
                    } else {
                        jobs.push(Job::Upload {
                            local: local.clone(),
                            target,
                            size: meta.len(),
                            listed: Listed::No,
                        });
                    }
                }
                (Location::Sandbox { path: s, .. }, Location::Local(d)) => {
                    let target = if dst_is_dir { d.join(&name) } else { d.clone() };
                    // Opened at once (the directory check and the HEAD
                    // together); the download reuses it.
                    let opened = match self.open_checked(s, false).await {
                        Ok(d) => Some(d),
                        Err(e) if e.kind() == ErrorKind::IsADirectory => None,
                        // A directory of mount points only, or an error.
                        Err(e) => match self.stat(s).await {
                            Ok(entry) if entry.kind == EntryKind::Directory => None,
                            _ => return Err(e),
                        },
                    };
                    match opened {
                        None => {
                            if !options.recursive {
                                return Err(directory(src));
                            }
                            walk_sandbox(self, s, &target, &mut jobs).await?;
                        }
                        Some(d) => jobs.push(Job::Download {
                            source: s.clone(),
                            local: target,
                            size: d.size(),
                            listed: Listed::No,
                            opened: Some(Box::new(d)),
                        }),
                    }
                }
            }
        }
        progress.planned(
            jobs.len() as u64 + within.files,
            jobs.iter().map(Job::size).sum::<u64>() + within.bytes,
        );
        progress.advance(within.bytes);
        let notices = Mutex::new(Vec::<String>::new());
        let sent = AtomicU64::new(0);
        let files = jobs.len() as u64 + within.files;
        let journal = journal.as_ref();
        // Several files at once. Each is admitted here by what it will hold
        // of the cache, so that the cache never makes one wait (its wait
        // times out): a tree of large files runs as many at once as fit, a
        // tree of small ones up to `transfers`.
        let kib = |b: u64| u32::try_from(b.div_ceil(1024).max(1)).unwrap_or(u32::MAX);
        let room = kib(self.cache().config().total);
        let admit = tokio::sync::Semaphore::new(room as usize);
        let bytes: u64 = futures::stream::iter(jobs)
            .map(|job| {
                let (notices, sent, admit) = (&notices, &sent, &admit);
                async move {
                    let upload = matches!(job, Job::Upload { .. });
                    let mut held = self.cache().most_held(job.size(), upload);
                    if options.verify {
                        // The check reads the file back through the cache.
                        held = held.max(self.cache().most_held(job.size(), !upload));
                    }
                    let need = kib(held).min(room);
                    let _admitted = admit
                        .acquire_many(need)
                        .await
                        .map_err(|_| Error::new(ErrorKind::Other, "the copy was cancelled"))?;
                    let n = match job {
                        Job::Upload {
                            local,
                            target,
                            listed,
                            ..
                        } => {
                            let up = upload_file(
                                self,
                                &local,
                                &target,
                                options.overwrite,
                                journal,
                                progress,
                                listed == Listed::Yes,
                            )
                            .await?;
                            if options.verify {
                                verify_copy(self, &local, &target).await?;
                            }
                            if let Some(msg) = up.notice {
                                notices.lock().unwrap_or_else(|p| p.into_inner()).push(msg);
                            }
                            sent.fetch_add(up.sent, Ordering::Relaxed);
                            up.size
                        }
                        Job::Download {
                            source: src,
                            local,
                            listed,
                            opened,
                            size,
                        } => {
                            let advance = |n| progress.advance(n);
                            let n = match opened {
                                Some(d) => self.save_download(*d, &local, advance).await?,
                                None if listed == Listed::Yes => {
                                    self.download_listed_to_file(&src, &local, size, advance)
                                        .await?
                                }
                                None => {
                                    self.download_to_file_checked(&src, &local, advance, false)
                                        .await?
                                }
                            };
                            if options.verify {
                                verify_copy(self, &local, &src).await?;
                            }
                            n
                        }
                    };
                    progress.file_done();
                    Ok::<u64, Error>(n)
                }
            })
            .buffer_unordered(options.transfers.max(1))
            .try_fold(within.bytes, |acc, n| async move { Ok(acc + n) })
            .await?;
        let mut notices = notices.into_inner().unwrap_or_default();
        notices.sort();
        notices.dedup();
        for n in &notices {
            progress.notice(n);
        }
        Ok(CopySummary {
            files,
            bytes,
            bytes_sent: sent.load(Ordering::Relaxed),
            seconds: started.elapsed().as_secs_f64(),
            notices,
        })
    }
}
