//! `corral mv`, `corral rm` and `corral mkdir`: one library call each.

use corral::UserSandbox;
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
    from: &str,
    to: &str,
    json: bool,
) -> Outcome {
    let moved = sb.rename(from, to).await?;
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

pub(crate) async fn rm(sb: &UserSandbox, paths: &[String], recursive: bool) -> Outcome {
    for p in paths {
        sb.remove(p, recursive).await?;
    }
    Ok(())
}

pub(crate) async fn mkdir(sb: &UserSandbox, paths: &[String], parents: bool) -> Outcome {
    for p in paths {
        sb.mkdir(p, parents).await?;
    }
    Ok(())
}
