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

/// A handle's reply to OPEN and OPENDIR.
pub(crate) fn handle(id: u32, handle: String) -> Packet {
    Packet::Handle(Handle { id, handle })
}
