//! The one error type of the domain and of every port implementation.
//!
//! An [`Error`] carries a [`ErrorKind`] that callers branch on, whether the
//! failure is worth retrying, the operation that failed and the virtual path
//! or key concerned. Its message is written for the person who has to fix the
//! problem. By construction it never holds a secret: adapters build messages
//! from the server's answer and from non-secret settings only.

use std::fmt;

use crate::node::SpecialKind;

/// What went wrong, coarsely enough to branch on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ErrorKind {
    /// The object, directory, bucket or upload does not exist.
    NotFound,
    /// The target exists and the operation does not overwrite.
    AlreadyExists,
    /// A file was expected and the path is a directory.
    IsADirectory,
    /// A directory was expected and the path is a file (or a path's parent is one).
    NotADirectory,
    /// A directory holds entries and the operation needs it empty.
    DirectoryNotEmpty,
    /// The file is being written and cannot be used that way until the write completes.
    Busy,
    /// The credentials are valid but lack the permission.
    PermissionDenied,
    /// The credentials were refused (unknown key, bad signature, proxy authentication).
    Unauthenticated,
    /// The request or a setting is malformed.
    InvalidInput,
    /// A path would leave the sandbox (`..` above the root).
    EscapesSandbox,
    /// A size limit was exceeded (file size, part count, key length).
    TooLarge,
    /// The backend or server lacks the capability.
    Unsupported,
    /// A precondition failed or the object changed underneath.
    Conflict,
    /// The server or network is unavailable (connection refused, timeout, 5xx, TLS).
    Unavailable,
    /// The operation was cancelled or timed out waiting for a resource.
    Cancelled,
    /// The server answered something that makes no sense (malformed or hostile).
    InvalidResponse,
    /// Anything else.
    Other,
}

impl ErrorKind {
    /// The kind of an operating system error (local files, the File
    /// backend): the one table every caller uses.
    pub fn from_io(kind: std::io::ErrorKind) -> Self {
        use std::io::ErrorKind as Io;
        match kind {
            Io::NotFound => Self::NotFound,
            Io::AlreadyExists => Self::AlreadyExists,
            Io::IsADirectory => Self::IsADirectory,
            Io::NotADirectory => Self::NotADirectory,
            Io::DirectoryNotEmpty => Self::DirectoryNotEmpty,
            Io::ResourceBusy | Io::ExecutableFileBusy => Self::Busy,
            Io::PermissionDenied | Io::ReadOnlyFilesystem => Self::PermissionDenied,
            Io::StorageFull | Io::QuotaExceeded | Io::FileTooLarge => Self::TooLarge,
            Io::InvalidFilename | Io::InvalidInput => Self::InvalidInput,
            Io::Unsupported => Self::Unsupported,
            Io::TimedOut
            | Io::ConnectionRefused
            | Io::ConnectionReset
            | Io::ConnectionAborted
            | Io::BrokenPipe
            | Io::NotConnected => Self::Unavailable,
            Io::Interrupted => Self::Cancelled,
            _ => Self::Other,
        }
    }

    /// A short lower-case name, stable for logs and JSON output.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::NotFound => "not found",
            Self::AlreadyExists => "already exists",
            Self::IsADirectory => "is a directory",
            Self::NotADirectory => "not a directory",
            Self::DirectoryNotEmpty => "directory not empty",
            Self::Busy => "busy",
            Self::PermissionDenied => "permission denied",
            Self::Unauthenticated => "unauthenticated",
            Self::InvalidInput => "invalid input",
            Self::EscapesSandbox => "escapes sandbox",
            Self::TooLarge => "too large",
            Self::Unsupported => "unsupported",
            Self::Conflict => "conflict",
            Self::Unavailable => "unavailable",
            Self::Cancelled => "cancelled",
            Self::InvalidResponse => "invalid response",
            Self::Other => "error",
        }
    }

    /// Whether an error of this kind is usually worth retrying.
    pub fn is_temporary_by_default(self) -> bool {
        matches!(self, Self::Unavailable)
    }
}

impl fmt::Display for ErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The operation during which an error happened.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
#[allow(missing_docs)] // The variant names are the documentation.
pub enum Operation {
    Head,
    Get,
    Put,
    Delete,
    List,
    Copy,
    CreateMultipart,
    UploadPart,
    CompleteMultipart,
    AbortMultipart,
    ListMultipart,
    Connect,
    Configure,
    Resolve,
}

impl Operation {
    /// A short lower-case name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Head => "head",
            Self::Get => "get",
            Self::Put => "put",
            Self::Delete => "delete",
            Self::List => "list",
            Self::Copy => "copy",
            Self::CreateMultipart => "create multipart upload",
            Self::UploadPart => "upload part",
            Self::CompleteMultipart => "complete multipart upload",
            Self::AbortMultipart => "abort multipart upload",
            Self::ListMultipart => "list multipart uploads",
            Self::Connect => "connect",
            Self::Configure => "configure",
            Self::Resolve => "resolve",
        }
    }
}

impl fmt::Display for Operation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The domain's error: a kind, a retry hint, context and an actionable
/// message. Cheap to clone (an upload keeps its first error to fail later
/// calls with).
#[derive(Debug, Clone)]
pub struct Error {
    kind: ErrorKind,
    temporary: bool,
    operation: Option<Operation>,
    path: Option<String>,
    key: Option<String>,
    special: Option<SpecialKind>,
    setting: Option<&'static str>,
    message: String,
    source: Option<std::sync::Arc<dyn std::error::Error + Send + Sync + 'static>>,
}

/// `Result` with the domain's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// A new error of `kind` with a message for the user.
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        Self {
            kind,
            temporary: kind.is_temporary_by_default(),
            operation: None,
            path: None,
            key: None,
            special: None,
            setting: None,
            message: message.into(),
            source: None,
        }
    }

    /// Records the operation that failed.
    #[must_use]
    pub fn with_operation(mut self, operation: Operation) -> Self {
        self.operation = Some(operation);
        self
    }

    /// Records the user's path concerned (`/reports/q3.csv`).
    #[must_use]
    pub fn with_path(mut self, path: impl Into<String>) -> Self {
        self.path = Some(path.into());
        self
    }

    /// Records the object key concerned: what a backend knows. The sandbox
    /// layer that wraps every backend turns it into the user's path; a
    /// user never sees it.
    #[must_use]
    pub fn with_key(mut self, key: impl Into<String>) -> Self {
        self.key = Some(key.into());
        self
    }

    /// Records the setting (a config key such as `maxCloudCacheUploadSize`)
    /// whose value is at fault, so that a front-end can say how it sets it.
    #[must_use]
    pub fn with_setting(mut self, key: &'static str) -> Self {
        self.setting = Some(key);
        self
    }

    /// The setting at fault, when one is.
    pub fn setting(&self) -> Option<&'static str> {
        self.setting
    }

    /// Replaces the message, keeping the kind and the context.
    #[must_use]
    pub fn with_message(mut self, message: impl Into<String>) -> Self {
        self.message = message.into();
        self
    }

    /// Overrides the retry hint.
    #[must_use]
    pub fn with_temporary(mut self, temporary: bool) -> Self {
        self.temporary = temporary;
        self
    }

    /// Attaches the underlying cause. Its text must not hold a secret.
    #[must_use]
    pub fn with_source(mut self, source: impl std::error::Error + Send + Sync + 'static) -> Self {
        self.source = Some(std::sync::Arc::new(source));
        self
    }

    /// The kind to branch on.
    pub fn kind(&self) -> ErrorKind {
        self.kind
    }

    /// Whether retrying the same request may succeed.
    pub fn is_temporary(&self) -> bool {
        self.temporary
    }

    /// The operation that failed, when known.
    pub fn operation(&self) -> Option<Operation> {
        self.operation
    }

    /// The user's path concerned, when known.
    pub fn path(&self) -> Option<&str> {
        self.path.as_deref()
    }

    /// The object key concerned, when a backend said which.
    pub fn key(&self) -> Option<&str> {
        self.key.as_deref()
    }

    /// The message without context.
    pub fn message(&self) -> &str {
        &self.message
    }

    /// A refusal to use a link or special file of a File sandbox
    /// ([`crate::node`]): [`ErrorKind::PermissionDenied`], with the kind kept
    /// so that a caller that may act on the entry itself (remove it) can tell.
    pub fn special_file(kind: SpecialKind) -> Self {
        let mut e = Self::new(
            ErrorKind::PermissionDenied,
            format!("it is {kind}, which corral never follows or opens"),
        );
        e.special = Some(kind);
        e
    }

    /// The special entry this error refused, if that is what it is.
    pub fn special(&self) -> Option<SpecialKind> {
        self.special
    }

    /// Shorthand for an [`ErrorKind::NotFound`] error.
    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::NotFound, message)
    }

    /// Shorthand for an [`ErrorKind::InvalidInput`] error.
    pub fn invalid_input(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::InvalidInput, message)
    }

    /// Shorthand for an [`ErrorKind::Unsupported`] error.
    pub fn unsupported(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Unsupported, message)
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (self.operation, self.path.as_ref().or(self.key.as_ref())) {
            (Some(op), Some(path)) => write!(f, "{op} {path}: ")?,
            (Some(op), None) => write!(f, "{op}: ")?,
            (None, Some(path)) => write!(f, "{path}: ")?,
            (None, None) => {}
        }
        f.write_str(&self.message)
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.source
            .as_deref()
            .map(|e| e as &(dyn std::error::Error + 'static))
    }
}

/// A configuration error: where, which key, and what to do about it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    /// Where in the config: e.g. `mapping for user "alice", mount "/archive"`.
    pub context: String,
    /// The option at fault, when one is.
    pub key: Option<String>,
    /// What is wrong and how to fix it.
    pub message: String,
}

impl ConfigError {
    pub(crate) fn new(key: Option<&str>, message: impl Into<String>) -> Self {
        Self {
            context: String::new(),
            key: key.map(str::to_owned),
            message: message.into(),
        }
    }

    pub(crate) fn key(key: &str, message: impl Into<String>) -> Self {
        Self::new(Some(key), message)
    }

    /// Sets the context if none was set yet.
    #[must_use]
    pub fn in_context(mut self, context: impl Into<String>) -> Self {
        if self.context.is_empty() {
            self.context = context.into();
        }
        self
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if !self.context.is_empty() {
            write!(f, "{}: ", self.context)?;
        }
        if let Some(key) = &self.key {
            write!(f, "`{key}`: ")?;
        }
        f.write_str(&self.message)
    }
}

impl std::error::Error for ConfigError {}

impl From<ConfigError> for Error {
    fn from(e: ConfigError) -> Self {
        Error::invalid_input(e.to_string()).with_operation(Operation::Configure)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn display_puts_context_first() {
        let e = Error::not_found("no such object")
            .with_operation(Operation::Get)
            .with_path("/a/b");
        assert_eq!(e.to_string(), "get /a/b: no such object");
        assert_eq!(e.kind(), ErrorKind::NotFound);
        assert!(!e.is_temporary());
    }

    #[test]
    fn unavailable_is_temporary_unless_overridden() {
        let e = Error::new(ErrorKind::Unavailable, "503 SlowDown");
        assert!(e.is_temporary());
        assert!(!e.with_temporary(false).is_temporary());
    }
}
