//! `corral ls [-l] [PATH]`.

use corral::{DirEntry, EntryKind, UserSandbox};
use futures::StreamExt;

use crate::cli::output::{EntryRow, Out, Outcome, time_text};

pub(crate) async fn run(
    sb: &UserSandbox,
    out: &mut Out,
    path: &corral::VirtualPath,
    long: bool,
    json: bool,
) -> Outcome {
    let mut entries = sb.list(path);
    let mut any = false;
    while let Some(e) = entries.next().await {
        let e: DirEntry = e?;
        any = true;
        let slash = if e.is_dir() { "/" } else { "" };
        if json {
            out.json(&EntryRow::new(&e.name, e.kind, e.size, e.modified))?;
        } else if long {
            let t = if e.is_dir() { 'd' } else { '-' };
            out.line(&format!(
                "{t} {:>14} {:<20} {}{slash}",
                e.size,
                time_text(e.modified),
                e.name,
            ))?;
        } else {
            out.line(&format!("{}{slash}", e.name))?;
        }
    }
    if !any {
        // An empty listing: say whether the directory exists at all.
        let entry = sb.stat(path).await?;
        if entry.kind == EntryKind::File {
            out.line(&entry.path.to_string())?;
        }
    }
    Ok(())
}
