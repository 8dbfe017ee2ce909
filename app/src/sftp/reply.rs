//! Answers: status replies built from the library's typed errors, and the
//! other reply packets. A client gets messages meant for it; the operator's
//! log gets the detail.

use bytes::Bytes;
use corral::{Error, ErrorKind};
use russh_sftp::protocol::{Handle, Packet, Status, StatusCode};

/// The SFTP status of an error kind (as mountpoint-s3 maps its errors to
/// errnos: one table, by kind, never by message).
pub(crate) trait ToStatus {
    /// The status code a client gets.
    fn to_status(&self) -> StatusCode;
}

impl ToStatus for ErrorKind {
    fn to_status(&self) -> StatusCode {
        match self {
            ErrorKind::NotFound => StatusCode::NoSuchFile,
            ErrorKind::PermissionDenied | ErrorKind::EscapesSandbox => StatusCode::PermissionDenied,
            ErrorKind::Unsupported => StatusCode::OpUnsupported,
            _ => StatusCode::Failure,
        }
    }
}

/// What a client is told of an error: the library's message where it is
/// about the client's request; a plain sentence where the cause is the
/// server's (its storage, its settings, its cache), whose detail goes to
/// the operator's log. Never a setting, a flag or an OS error number.
pub(crate) fn client_message(e: &Error) -> String {
    let path = e.path().filter(|p| p.starts_with('/'));
    let at = |s: &str| match path {
        Some(p) => format!("{p}: {s}"),
        None => s.to_owned(),
    };
    match e.kind() {
        ErrorKind::Cancelled => at("the server is busy: try again in a moment"),
        ErrorKind::Unavailable | ErrorKind::Unauthenticated | ErrorKind::InvalidResponse => {
            at("the server's storage did not answer as it should: try again later")
        }
        ErrorKind::Other => at("the request failed on the server"),
        _ if e
            .setting()
            .is_some_and(|s| s != "parents" && s != "recursive") =>
        {
            at("the server's transfer settings do not allow this")
        }
        _ => strip_os_error(&e.to_string()),
    }
}

/// `s` without the ` (os error N)` the system's messages end with.
fn strip_os_error(s: &str) -> String {
    match s.rfind(" (os error ") {
        Some(i) if s.ends_with(')') => s[..i].to_owned(),
        _ => s.to_owned(),
    }
}

/// The status an error answers with; the operator's log gets the detail.
pub(crate) fn status(id: u32, e: &Error) -> Packet {
    let code = e.kind().to_status();
    match e.kind() {
        ErrorKind::Cancelled
        | ErrorKind::Unavailable
        | ErrorKind::Unauthenticated
        | ErrorKind::InvalidResponse
        | ErrorKind::Other => tracing::warn!(id, error = %e, "request failed on the server's side"),
        _ => tracing::debug!(id, error = %e, "request failed"),
    }
    Packet::Status(Status {
        id,
        status_code: code,
        error_message: client_message(e),
        language_tag: "en-US".to_owned(),
    })
}

pub(crate) fn ok(id: u32) -> Packet {
    code(id, StatusCode::Ok, "")
}

pub(crate) fn code(id: u32, status_code: StatusCode, message: &str) -> Packet {
    Packet::Status(Status {
        id,
        status_code,
        error_message: if message.is_empty() {
            status_code.to_string()
        } else {
            message.to_owned()
        },
        language_tag: "en-US".to_owned(),
    })
}

/// An answer's bytes on the wire.
pub(crate) fn encode(p: Packet) -> Result<Bytes, String> {
    Bytes::try_from(p).map_err(|e| e.to_string())
}

/// An answer on its way out: a packet, or a DATA answer already framed
/// (its bytes copied once, from the cache into the frame).
pub(crate) enum Reply {
    Packet(Packet),
    Encoded(Bytes),
}

impl From<Packet> for Reply {
    fn from(p: Packet) -> Self {
        Self::Packet(p)
    }
}

impl Reply {
    /// The frame to send: length, type, then the packet's fields.
    pub(crate) fn encode(self) -> Result<Bytes, String> {
        match self {
            Self::Packet(p) => encode(p),
            Self::Encoded(b) => Ok(b),
        }
    }
}

/// SSH_FXP_DATA.
const FXP_DATA: u8 = 103;

/// A DATA frame for `id` with room for `len` bytes of data, which the
/// caller appends; [`finish_data`] then writes the lengths.
pub(crate) fn start_data(id: u32, len: usize) -> bytes::BytesMut {
    use bytes::BufMut;
    let mut b = bytes::BytesMut::with_capacity(13 + len);
    b.put_u32(0);
    b.put_u8(FXP_DATA);
    b.put_u32(id);
    b.put_u32(0);
    b
}

/// The frame, its length and its data's length written.
pub(crate) fn finish_data(mut b: bytes::BytesMut) -> Bytes {
    let frame = (b.len() - 4) as u32;
    let data = (b.len() - 13) as u32;
    b[0..4].copy_from_slice(&frame.to_be_bytes());
    b[9..13].copy_from_slice(&data.to_be_bytes());
    b.freeze()
}

/// A handle's reply to OPEN and OPENDIR.
pub(crate) fn handle(id: u32, handle: String) -> Packet {
    Packet::Handle(Handle { id, handle })
}

#[cfg(test)]
mod tests {
    use super::*;
    use russh_sftp::protocol::Data;

    #[test]
    fn a_data_frame_is_the_codecs_own() {
        for data in [
            vec![],
            vec![7u8],
            (0..70_000u32).map(|i| i as u8).collect::<Vec<u8>>(),
        ] {
            let mut frame = start_data(42, data.len());
            frame.extend_from_slice(&data);
            let ours = finish_data(frame);
            let theirs = encode(Packet::Data(Data { id: 42, data })).expect("encode");
            assert_eq!(ours, theirs);
        }
    }
}
