//! What a directory entry of a File sandbox is, and what corral does with it.
//!
//! A File sandbox's directory can be written by others (another service, an
//! unpacked archive, a sync job), so it may hold things no object store has:
//! symbolic links, FIFOs, sockets, devices, and files hard-linked from
//! elsewhere. Any of them could lead outside the sandbox or hang a reader,
//! so the rule is one for all of them ([`NodeKind::Special`]):
//!
//! - they are never followed and never opened;
//! - listings hide them and count them, as they hide keys a user could not
//!   have named;
//! - `stat`, reads and copies of one are refused as permission denied;
//! - removing one removes the entry itself, never what it points to;
//! - walks (`rm -r`, `cp -r`, a recursive listing) never descend through one.
//!
//! A regular file with more than one hard link counts as special: its other
//! names may lie outside the sandbox, and reading it would show their
//! content. Writes never go through any entry: a new file replaces the name
//! (the kernel's rename), so whatever the name led to stays as it was.
//!
//! The adapter reads the entry without following it (`lstat`, `O_NOFOLLOW`)
//! and asks [`classify`].

use std::fmt;

/// The file type as `lstat` reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FileType {
    /// A regular file.
    Regular,
    /// A directory.
    Directory,
    /// A symbolic link.
    Symlink,
    /// A named pipe.
    Fifo,
    /// A Unix socket.
    Socket,
    /// A block device.
    BlockDevice,
    /// A character device.
    CharDevice,
    /// Anything else the platform reports.
    Unknown,
}

/// Why an entry is special.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum SpecialKind {
    /// A symbolic link.
    Symlink,
    /// A named pipe: opening one could block forever.
    Fifo,
    /// A Unix socket.
    Socket,
    /// A block or character device.
    Device,
    /// A regular file with other hard links, which may lie outside.
    HardLinked,
    /// A type corral does not know.
    Unknown,
}

impl SpecialKind {
    /// A short phrase for messages: "a symbolic link", "a named pipe", …
    pub fn describe(self) -> &'static str {
        match self {
            Self::Symlink => "a symbolic link",
            Self::Fifo => "a named pipe",
            Self::Socket => "a socket",
            Self::Device => "a device",
            Self::HardLinked => "a file with other hard links",
            Self::Unknown => "a special file",
        }
    }
}

impl fmt::Display for SpecialKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.describe())
    }
}

/// What an entry is for corral.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NodeKind {
    /// A file a user may read, replace or remove.
    File,
    /// A directory a walk may enter.
    Directory,
    /// Never followed or opened; see the [module docs](self).
    Special(SpecialKind),
}

/// Classifies an entry from what `lstat` says of it: its type and its
/// number of hard links.
pub fn classify(file_type: FileType, links: u64) -> NodeKind {
    match file_type {
        FileType::Regular if links <= 1 => NodeKind::File,
        FileType::Regular => NodeKind::Special(SpecialKind::HardLinked),
        FileType::Directory => NodeKind::Directory,
        FileType::Symlink => NodeKind::Special(SpecialKind::Symlink),
        FileType::Fifo => NodeKind::Special(SpecialKind::Fifo),
        FileType::Socket => NodeKind::Special(SpecialKind::Socket),
        FileType::BlockDevice | FileType::CharDevice => NodeKind::Special(SpecialKind::Device),
        FileType::Unknown => NodeKind::Special(SpecialKind::Unknown),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_single_link_regular_files_and_directories_are_usable() {
        assert_eq!(classify(FileType::Regular, 1), NodeKind::File);
        assert_eq!(classify(FileType::Regular, 0), NodeKind::File);
        assert_eq!(
            classify(FileType::Regular, 2),
            NodeKind::Special(SpecialKind::HardLinked)
        );
        // Directories always have several links (`.` and `..` of children).
        assert_eq!(classify(FileType::Directory, 7), NodeKind::Directory);
        for (t, k) in [
            (FileType::Symlink, SpecialKind::Symlink),
            (FileType::Fifo, SpecialKind::Fifo),
            (FileType::Socket, SpecialKind::Socket),
            (FileType::BlockDevice, SpecialKind::Device),
            (FileType::CharDevice, SpecialKind::Device),
            (FileType::Unknown, SpecialKind::Unknown),
        ] {
            assert_eq!(classify(t, 1), NodeKind::Special(k));
        }
    }
}
