//! Multipart uploads of a File sandbox.
//!
//! An upload's parts go into one spool: a file with no name
//! ([`super::stage::anonymous`]) in the target's directory, so that nothing
//! can be planted at a part's place and a crash leaves nothing behind. Each
//! part is appended at an offset of its own (parts may come in any order and
//! at once) and recorded with its length and CRC-64/NVME, which make its
//! entity tag. Completion checks the parts it is given against those
//! records, copies them in order into a staging file while checking each
//! CRC again, syncs it and gives it the target's name in one rename. The
//! uploads live in this process only: a File upload cannot be resumed by
//! another process ([`corral_domain::Capabilities::resume`] is false), but
//! every backend of the process on the same directory (each session's) sees
//! them: they are listed, their parts too, and continued.

use std::collections::{BTreeMap, HashMap};
use std::os::unix::fs::FileExt;
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use corral_domain::port::{CompletedPart, PendingUpload, StoredPart, UploadId};
use corral_domain::{Error, ErrorKind, ObjectKey, Operation, Result};

/// One part in the spool.
#[derive(Debug, Clone, Copy)]
pub(super) struct Part {
    pub(super) offset: u64,
    pub(super) len: u64,
    pub(super) crc: u64,
}

impl Part {
    pub(super) fn etag(&self) -> String {
        format!("\"{:016x}-{}\"", self.crc, self.len)
    }
}

/// An upload in progress.
#[derive(Debug)]
pub(super) struct Spool {
    /// The sandbox directory it belongs to.
    scope: Arc<str>,
    pub(super) key: ObjectKey,
    pub(super) file: std::fs::File,
    created: SystemTime,
    state: Mutex<SpoolState>,
}

#[derive(Debug, Default)]
struct SpoolState {
    end: u64,
    parts: BTreeMap<u32, Part>,
}

pub(super) fn crc64(data: &[u8]) -> u64 {
    let mut d = crc_fast::Digest::new(crc_fast::CrcAlgorithm::Crc64Nvme);
    d.update(data);
    d.finalize()
}

impl Spool {
    pub(super) fn new(scope: Arc<str>, key: ObjectKey, file: std::fs::File) -> Self {
        Self {
            scope,
            key,
            file,
            created: SystemTime::now(),
            state: Mutex::default(),
        }
    }

    /// Writes a part (blocking). A part sent again replaces the earlier one.
    pub(super) fn write_part(&self, number: u32, data: &[u8]) -> std::io::Result<Part> {
        let len = data.len() as u64;
        let offset = {
            let mut s = self.state.lock().unwrap_or_else(|p| p.into_inner());
            let at = s.end;
            s.end += len;
            at
        };
        self.file.write_all_at(data, offset)?;
        let part = Part {
            offset,
            len,
            crc: crc64(data),
        };
        self.state
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .parts
            .insert(number, part);
        Ok(part)
    }

    /// Writes part `number` as bytes `range` of `src` (blocking), read in
    /// pieces: the bytes go from file to file, never through the cache.
    pub(super) fn copy_part(
        &self,
        number: u32,
        src: &std::fs::File,
        range: std::ops::Range<u64>,
    ) -> std::io::Result<Part> {
        let len = range.end - range.start;
        let offset = {
            let mut s = self.state.lock().unwrap_or_else(|p| p.into_inner());
            let at = s.end;
            s.end += len;
            at
        };
        let mut buf = vec![0u8; (1u64 << 20).min(len.max(1)) as usize];
        let mut digest = crc_fast::Digest::new(crc_fast::CrcAlgorithm::Crc64Nvme);
        let mut done = 0u64;
        while done < len {
            let n = (len - done).min(buf.len() as u64) as usize;
            src.read_exact_at(&mut buf[..n], range.start + done)?;
            digest.update(&buf[..n]);
            self.file.write_all_at(&buf[..n], offset + done)?;
            done += n as u64;
        }
        let part = Part {
            offset,
            len,
            crc: digest.finalize(),
        };
        self.state
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .parts
            .insert(number, part);
        Ok(part)
    }

    /// The recorded parts for a completion, checked against what the caller
    /// says it sent: parts 1..=N, each with the entity tag it was given.
    pub(super) fn plan(&self, mut given: Vec<CompletedPart>) -> Result<Vec<Part>> {
        let op = Operation::CompleteMultipart;
        given.sort_by_key(|p| p.number);
        let contiguous = given
            .iter()
            .enumerate()
            .all(|(i, p)| p.number as usize == i + 1);
        if given.is_empty() || !contiguous {
            return Err(Error::invalid_input(
                "a multipart upload completes with parts 1..=N, each exactly once",
            )
            .with_operation(op)
            .with_key(self.key.as_str().to_owned()));
        }
        let state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        given
            .iter()
            .map(|p| match state.parts.get(&p.number) {
                Some(part) if part.etag() == p.etag => Ok(*part),
                Some(_) => Err(Error::invalid_input(format!(
                    "part {} is not the part that was uploaded (its entity tag differs)",
                    p.number
                ))),
                None => Err(Error::invalid_input(format!(
                    "part {} was never uploaded",
                    p.number
                ))),
            })
            .collect::<Result<_>>()
            .map_err(|e| e.with_operation(op).with_key(self.key.as_str().to_owned()))
    }

    /// Copies `parts` in order to `out` (blocking), checking each against
    /// its recorded CRC on the way.
    pub(super) fn assemble(&self, parts: &[Part], out: &std::fs::File) -> Result<u64> {
        let op = Operation::CompleteMultipart;
        let key = self.key.as_str();
        let mut buf = vec![0u8; 1 << 20];
        let mut at = 0u64;
        for (i, part) in parts.iter().enumerate() {
            let mut digest = crc_fast::Digest::new(crc_fast::CrcAlgorithm::Crc64Nvme);
            let mut done = 0u64;
            while done < part.len {
                let n = (part.len - done).min(buf.len() as u64) as usize;
                self.file
                    .read_exact_at(&mut buf[..n], part.offset + done)
                    .map_err(|e| super::resolve::io_error(e, op, key))?;
                digest.update(&buf[..n]);
                out.write_all_at(&buf[..n], at)
                    .map_err(|e| super::resolve::io_error(e, op, key))?;
                done += n as u64;
                at += n as u64;
            }
            if digest.finalize() != part.crc {
                return Err(Error::new(
                    ErrorKind::InvalidResponse,
                    format!("part {} changed in staging (its CRC-64 differs)", i + 1),
                )
                .with_operation(op)
                .with_key(key.to_owned()));
            }
        }
        Ok(at)
    }
}

/// The uploads of the File backends of a process, by id (each knows its
/// directory).
#[derive(Debug, Default)]
pub(crate) struct Uploads(Mutex<HashMap<String, Arc<Spool>>>);

impl Uploads {
    pub(super) fn insert(&self, id: String, spool: Spool) {
        self.0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(id, Arc::new(spool));
    }

    /// The uploads of directory `scope` under `prefix`.
    pub(super) fn list(&self, scope: &str, prefix: &ObjectKey) -> Vec<PendingUpload> {
        let map = self.0.lock().unwrap_or_else(|p| p.into_inner());
        let mut v: Vec<PendingUpload> = map
            .iter()
            .filter(|(_, s)| &*s.scope == scope && s.key.as_str().starts_with(prefix.as_str()))
            .map(|(id, s)| PendingUpload {
                key: s.key.clone(),
                upload_id: UploadId(id.clone()),
                initiated: Some(s.created),
            })
            .collect();
        v.sort_by(|a, b| (&a.key, a.initiated).cmp(&(&b.key, b.initiated)));
        v
    }

    /// The parts stored so far of upload `id`.
    pub(super) fn parts(
        &self,
        scope: &str,
        key: &ObjectKey,
        id: &UploadId,
    ) -> Result<Vec<StoredPart>> {
        let spool = self.get(scope, key, id, Operation::ListMultipart)?;
        let state = spool.state.lock().unwrap_or_else(|p| p.into_inner());
        Ok(state
            .parts
            .iter()
            .map(|(n, p)| StoredPart {
                number: *n,
                etag: p.etag(),
                size: p.len,
            })
            .collect())
    }

    /// The upload `id` of `key` in directory `scope`.
    pub(super) fn get(
        &self,
        scope: &str,
        key: &ObjectKey,
        id: &UploadId,
        op: Operation,
    ) -> Result<Arc<Spool>> {
        let map = self.0.lock().unwrap_or_else(|p| p.into_inner());
        match map.get(&id.0) {
            Some(s) if s.key == *key && &*s.scope == scope => Ok(Arc::clone(s)),
            _ => Err(Error::not_found(format!(
                "no such multipart upload {id} (completed or aborted already)"
            ))
            .with_operation(op)
            .with_key(key.as_str().to_owned())),
        }
    }

    /// Forgets upload `id`; its spool is freed when the last user drops it.
    pub(super) fn remove(
        &self,
        scope: &str,
        key: &ObjectKey,
        id: &UploadId,
        op: Operation,
    ) -> Result<()> {
        self.get(scope, key, id, op)?;
        self.0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&id.0);
        Ok(())
    }
}
