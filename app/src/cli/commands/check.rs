//! `corral check [--write]`: connects to each mount of the user.

use corral::UserSandbox;
use serde::Serialize;

use crate::cli::output::{Failure, Out, Outcome};

#[derive(Serialize)]
struct Row<'a> {
    mount: &'a str,
    #[serde(rename = "type")]
    kind: &'static str,
    ok: bool,
    detail: String,
}

#[derive(Serialize)]
struct Report<'a> {
    mounts: Vec<Row<'a>>,
}

pub(crate) async fn run(sb: &UserSandbox, out: &mut Out, write: bool, json: bool) -> Outcome {
    let checks = sb.check(write).await;
    let rows: Vec<Row<'_>> = checks
        .iter()
        .map(|c| Row {
            mount: &c.mount,
            kind: c.kind,
            ok: c.error.is_none(),
            detail: match &c.error {
                None if write => "ok (read, write, delete)".to_owned(),
                None => "ok".to_owned(),
                Some(e) => format!("FAILED: {e}"),
            },
        })
        .collect();
    if json {
        out.json(&Report { mounts: rows })?;
    } else {
        for r in &rows {
            out.line(&format!("{:<20} {:<7} {}", r.mount, r.kind, r.detail))?;
        }
    }
    match checks.into_iter().find_map(|c| c.error) {
        None => Ok(()),
        Some(e) => Err(Failure::Corral(e)),
    }
}
