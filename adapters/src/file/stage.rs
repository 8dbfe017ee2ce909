//! Staging files: new content is written where nobody can reach it, then
//! given its name in one step.
//!
//! A staging file is opened with `O_TMPFILE` in the target's directory: it
//! has no name at all until it is linked into place, so it cannot be
//! predicted, planted, listed or left behind by a crash. Linking uses
//! `linkat(AT_EMPTY_PATH)` where the process may (`CAP_DAC_READ_SEARCH`),
//! else the `/proc/self/fd` form. Replacing a name links the file to a
//! random name first and renames that over the target (rename replaces the
//! entry itself: a link at the target is replaced, never written through);
//! creating links straight to the name, which fails if anything is there.
//!
//! On filesystems without `O_TMPFILE` the file gets a random name of 128
//! bits, `.corral-<32 hex>.tmp`, created exclusively (`O_EXCL` never follows a
//! link), and listings hide that shape ([`is_staging_name`]).

use std::io::{self, ErrorKind as IoKind};
use std::os::fd::AsFd;

use cap_std::fs::Dir;
use rustix::fs::{AtFlags, Mode, OFlags};

const PREFIX: &str = ".corral-";
const SUFFIX: &str = ".tmp";

/// Whether a name has the shape of a named staging file.
pub(super) fn is_staging_name(name: &str) -> bool {
    name.strip_prefix(PREFIX)
        .and_then(|r| r.strip_suffix(SUFFIX))
        .is_some_and(|hex| hex.len() == 32 && hex.bytes().all(|b| b.is_ascii_hexdigit()))
}

fn random_name() -> io::Result<String> {
    let mut bytes = [0u8; 16];
    let mut filled = 0;
    while filled < bytes.len() {
        filled +=
            rustix::rand::getrandom(&mut bytes[filled..], rustix::rand::GetRandomFlags::empty())?;
    }
    let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    Ok(format!("{PREFIX}{hex}{SUFFIX}"))
}

/// Calls `f` with fresh random names until one is not taken.
fn with_random_name<T>(mut f: impl FnMut(&str) -> io::Result<T>) -> io::Result<(T, String)> {
    for _ in 0..16 {
        let name = random_name()?;
        match f(&name) {
            Ok(t) => return Ok((t, name)),
            Err(e) if e.kind() == IoKind::AlreadyExists => continue,
            Err(e) => return Err(e),
        }
    }
    Err(io::Error::new(
        IoKind::AlreadyExists,
        "no free name for a staging file",
    ))
}

fn tmpfile(dir: &Dir, linkable: bool) -> io::Result<Option<std::fs::File>> {
    let mut flags = OFlags::TMPFILE | OFlags::RDWR | OFlags::CLOEXEC;
    if !linkable {
        flags |= OFlags::EXCL;
    }
    // A file that will be linked gets the usual mode (less the umask); one
    // that never will, none.
    let mode = Mode::from_raw_mode(if linkable { 0o666 } else { 0o600 });
    match rustix::fs::openat(dir, ".", flags, mode) {
        Ok(fd) => Ok(Some(std::fs::File::from(fd))),
        // No O_TMPFILE on this filesystem (or kernel).
        Err(rustix::io::Errno::OPNOTSUPP | rustix::io::Errno::ISDIR | rustix::io::Errno::INVAL) => {
            Ok(None)
        }
        Err(e) => Err(e.into()),
    }
}

fn create_named(dir: &Dir, mode: u32) -> io::Result<(std::fs::File, String)> {
    with_random_name(|name| {
        let fd = rustix::fs::openat(
            dir,
            name,
            OFlags::CREATE | OFlags::EXCL | OFlags::RDWR | OFlags::CLOEXEC | OFlags::NOFOLLOW,
            Mode::from_raw_mode(mode),
        )?;
        Ok(std::fs::File::from(fd))
    })
}

/// A file with no name, for content that is only ever read back by this
/// process (the parts of a multipart upload). It disappears when closed.
pub(super) fn anonymous(dir: &Dir) -> io::Result<std::fs::File> {
    if let Some(f) = tmpfile(dir, false)? {
        return Ok(f);
    }
    let (f, name) = create_named(dir, 0o600)?;
    rustix::fs::unlinkat(dir, name.as_str(), AtFlags::empty())?;
    Ok(f)
}

/// New content for a name of `dir`; see the [module docs](self). Dropped
/// without [`Staged::persist`], it leaves nothing.
#[derive(Debug)]
pub(super) struct Staged {
    file: std::fs::File,
    dir: Dir,
    /// The random name, when the filesystem has no `O_TMPFILE`.
    name: Option<String>,
}

impl Staged {
    /// A staging file in `dir`.
    pub(super) fn new(dir: &Dir) -> io::Result<Self> {
        let dir = dir.try_clone()?;
        if let Some(file) = tmpfile(&dir, true)? {
            return Ok(Self {
                file,
                dir,
                name: None,
            });
        }
        let (file, name) = create_named(&dir, 0o666)?;
        Ok(Self {
            file,
            dir,
            name: Some(name),
        })
    }

    /// The file, to write the content into.
    pub(super) fn file(&self) -> &std::fs::File {
        &self.file
    }

    /// Gives the content its name: replacing what is there with `replace`,
    /// else failing with `AlreadyExists` if anything is.
    pub(super) fn persist(mut self, name: &str, replace: bool) -> io::Result<()> {
        let temp = match self.name.take() {
            Some(temp) => temp,
            None if !replace => return link_anonymous(&self.file, &self.dir, name),
            None => with_random_name(|temp| link_anonymous(&self.file, &self.dir, temp))?.1,
        };
        let r = if replace {
            rustix::fs::renameat(&self.dir, temp.as_str(), &self.dir, name).map_err(io::Error::from)
        } else {
            rustix::fs::linkat(&self.dir, temp.as_str(), &self.dir, name, AtFlags::empty())
                .map_err(io::Error::from)
        };
        if r.is_err() || !replace {
            let _ = rustix::fs::unlinkat(&self.dir, temp.as_str(), AtFlags::empty());
        }
        r
    }
}

impl Drop for Staged {
    fn drop(&mut self) {
        if let Some(name) = self.name.take() {
            let _ = rustix::fs::unlinkat(&self.dir, name.as_str(), AtFlags::empty());
        }
    }
}

/// Links an `O_TMPFILE` file at `name` of `dir`; fails if the name exists.
fn link_anonymous(file: &std::fs::File, dir: &Dir, name: &str) -> io::Result<()> {
    match rustix::fs::linkat(file.as_fd(), "", dir, name, AtFlags::EMPTY_PATH) {
        Ok(()) => Ok(()),
        // Without CAP_DAC_READ_SEARCH: the same link through procfs.
        Err(rustix::io::Errno::NOENT | rustix::io::Errno::PERM | rustix::io::Errno::ACCESS) => {
            let fd = rustix::fd::AsRawFd::as_raw_fd(file);
            rustix::fs::linkat(
                rustix::fs::CWD,
                format!("/proc/self/fd/{fd}").as_str(),
                dir,
                name,
                AtFlags::SYMLINK_FOLLOW,
            )
            .map_err(io::Error::from)
        }
        Err(e) => Err(e.into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn staging_names_are_random_and_recognised() {
        let (a, b) = (random_name().unwrap(), random_name().unwrap());
        assert_ne!(a, b);
        assert!(is_staging_name(&a), "{a}");
        assert!(!is_staging_name(".corral-x.tmp"));
        assert!(!is_staging_name("report.tmp"));
    }

    #[test]
    fn staged_files_appear_only_when_persisted() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = Dir::open_ambient_dir(tmp.path(), cap_std::ambient_authority()).unwrap();
        let count = || std::fs::read_dir(tmp.path()).unwrap().count();
        let s = Staged::new(&dir).unwrap();
        io::Write::write_all(&mut s.file(), b"one").unwrap();
        assert_eq!(count(), 0, "nothing visible before persist");
        s.persist("f", false).unwrap();
        assert_eq!(std::fs::read(tmp.path().join("f")).unwrap(), b"one");
        // Create refuses an existing name; replace replaces it.
        let s = Staged::new(&dir).unwrap();
        io::Write::write_all(&mut s.file(), b"two").unwrap();
        assert_eq!(
            s.persist("f", false).unwrap_err().kind(),
            IoKind::AlreadyExists
        );
        let s = Staged::new(&dir).unwrap();
        io::Write::write_all(&mut s.file(), b"three").unwrap();
        s.persist("f", true).unwrap();
        assert_eq!(std::fs::read(tmp.path().join("f")).unwrap(), b"three");
        assert_eq!(count(), 1, "no staging file left");
        // A link at the target is replaced, not written through.
        let outside = tempfile::tempdir().unwrap();
        std::fs::write(outside.path().join("victim"), b"keep").unwrap();
        std::os::unix::fs::symlink(outside.path().join("victim"), tmp.path().join("l")).unwrap();
        let s = Staged::new(&dir).unwrap();
        io::Write::write_all(&mut s.file(), b"new").unwrap();
        s.persist("l", true).unwrap();
        assert_eq!(
            std::fs::read(outside.path().join("victim")).unwrap(),
            b"keep"
        );
        assert!(
            std::fs::symlink_metadata(tmp.path().join("l"))
                .unwrap()
                .is_file()
        );
        let _ = anonymous(&dir).unwrap();
        assert_eq!(count(), 2);
    }
}
