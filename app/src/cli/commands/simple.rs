//! `corral mv`, `corral rm` and `corral mkdir`: one library call each.

use corral::{MkdirOptions, RemoveOptions, RenameOptions, UserSandbox, VirtualPath};
use serde::Serialize;

use crate::cli::output::{Out, Outcome};

#[derive(Serialize)]
struct Moved<'a> {
    moved: &'a str,
    to: &'a str,
    files: u64,
    bytes: u64,
}

pub(crate) async fn mv(
    sb: &UserSandbox,
    out: &mut Out,
    from: &VirtualPath,
    to: &VirtualPath,
    json: bool,
) -> Outcome {
    // `mv` replaces a file at the target, as POSIX mv does.
    let moved = sb.rename(from, to, RenameOptions { replace: true }).await?;
    if json {
        let (from, to) = (format!("corral:{from}"), format!("corral:{to}"));
        out.json(&Moved {
            moved: &from,
            to: &to,
            files: moved.files,
            bytes: moved.bytes,
        })?;
    }
    Ok(())
}

pub(crate) async fn rm(sb: &UserSandbox, paths: &[VirtualPath], recursive: bool) -> Outcome {
    for p in paths {
        let options = RemoveOptions {
            recursive,
            only: None,
        };
        sb.remove(p, options).await?;
    }
    Ok(())
}

pub(crate) async fn mkdir(sb: &UserSandbox, paths: &[VirtualPath], parents: bool) -> Outcome {
    for p in paths {
        sb.mkdir(p, MkdirOptions { parents }).await?;
    }
    Ok(())
}
