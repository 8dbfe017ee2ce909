//! `corral stat PATH`.

use corral::{EntryKind, UserSandbox, human_size};

use crate::cli::output::{EntryRow, Out, Outcome, time_text};

pub(crate) async fn run(
    sb: &UserSandbox,
    out: &mut Out,
    path: &corral::VirtualPath,
    json: bool,
) -> Outcome {
    let e = sb.stat(path).await?;
    let shown = e.path.to_string();
    if json {
        return out.json(&EntryRow::new(&shown, e.kind, e.size, e.modified));
    }
    out.line(&format!("path: {shown}"))?;
    if e.kind == EntryKind::Directory {
        return out.line("type: directory");
    }
    out.line("type: file")?;
    out.line(&format!("size: {} ({})", e.size, human_size(e.size)))?;
    out.line(&format!("modified: {}", time_text(e.modified)))
}
