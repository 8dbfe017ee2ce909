//! A request for an open handle, as the handle's task serves it.

use russh_sftp::protocol::FileAttributes;

use super::order::Turn;

/// A request for an open handle, as its task serves it.
pub(crate) enum HandleRequest {
    Read {
        id: u32,
        offset: u64,
        len: u32,
    },
    Write {
        id: u32,
        offset: u64,
        data: Vec<u8>,
    },
    Fstat {
        id: u32,
    },
    FSetStat {
        id: u32,
        attrs: FileAttributes,
    },
    ReadDir {
        id: u32,
    },
    /// With the turn of the handle's path, given back once CLOSE is done.
    Close {
        id: u32,
        turn: Option<Turn>,
    },
}
