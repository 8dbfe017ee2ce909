//! Standard output: one writer for every command, which ends quietly when
//! the reader goes away (`corral ls | head -1`), and JSON rows as serde
//! types.

use std::io::{ErrorKind as IoKind, Write};

use corral::{EntryKind, Error, ErrorKind};
use serde::Serialize;

/// What a command can fail with: a corral error, or the reader of standard
/// output gone (not an error: the command just stops).
#[derive(Debug)]
pub(crate) enum Failure {
    Corral(Error),
    Closed,
}

impl From<Error> for Failure {
    fn from(e: Error) -> Self {
        Self::Corral(e)
    }
}

pub(crate) type Outcome = Result<(), Failure>;

/// Buffered standard output.
pub(crate) struct Out {
    out: std::io::BufWriter<std::io::Stdout>,
}

impl Out {
    pub(crate) fn new() -> Self {
        Self {
            out: std::io::BufWriter::new(std::io::stdout()),
        }
    }

    fn check(r: std::io::Result<()>) -> Outcome {
        match r {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == IoKind::BrokenPipe => Err(Failure::Closed),
            Err(e) => Err(Failure::Corral(Error::new(
                ErrorKind::Other,
                format!("writing to standard output: {e}"),
            ))),
        }
    }

    /// A line of text.
    pub(crate) fn line(&mut self, text: &str) -> Outcome {
        Self::check(writeln!(self.out, "{text}"))
    }

    /// A JSON row.
    pub(crate) fn json(&mut self, row: &impl Serialize) -> Outcome {
        let text = serde_json::to_string(row).map_err(|e| {
            Failure::Corral(Error::new(ErrorKind::Other, format!("JSON output: {e}")))
        })?;
        self.line(&text)
    }

    /// Raw bytes (`cat`).
    pub(crate) fn bytes(&mut self, data: &[u8]) -> Outcome {
        Self::check(self.out.write_all(data))
    }

    /// Everything written so far, out.
    pub(crate) fn flush(&mut self) -> Outcome {
        Self::check(self.out.flush())
    }
}

impl Drop for Out {
    fn drop(&mut self) {
        let _ = self.out.flush();
    }
}

/// A `--json` row of a listing or of `stat`.
#[derive(Serialize)]
pub(crate) struct EntryRow<'a> {
    pub(crate) name: &'a str,
    #[serde(rename = "type")]
    pub(crate) kind: &'static str,
    pub(crate) size: u64,
    pub(crate) modified: Option<String>,
}

impl<'a> EntryRow<'a> {
    pub(crate) fn new(
        name: &'a str,
        kind: EntryKind,
        size: u64,
        modified: Option<std::time::SystemTime>,
    ) -> Self {
        Self {
            name,
            kind: if kind == EntryKind::Directory {
                "directory"
            } else {
                "file"
            },
            size,
            modified: modified.map(|t| time_text(Some(t))),
        }
    }
}

/// A time for people: RFC 3339 in UTC, to the second.
pub(crate) fn time_text(t: Option<std::time::SystemTime>) -> String {
    t.map(|t| {
        chrono::DateTime::<chrono::Utc>::from(t).to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
    })
    .unwrap_or_else(|| "-".to_owned())
}
