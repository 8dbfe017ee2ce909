//! `corral conformance [--mount M]`: the conformance suite against a mount.

use corral::conformance::Outcome as Case;
use corral::{Error, ErrorKind, UserSandbox};
use serde::Serialize;

use crate::cli::output::{Out, Outcome};

#[derive(Serialize)]
struct Row {
    area: String,
    case: &'static str,
    result: &'static str,
    detail: String,
    ms: u64,
}

#[derive(Serialize)]
struct Report<'a> {
    target: &'a str,
    cases: Vec<Row>,
    cleanup: &'a Option<String>,
}

pub(crate) async fn run(
    sb: &UserSandbox,
    out: &mut Out,
    mount: Option<String>,
    json: bool,
) -> Outcome {
    let report = sb.conformance(mount.as_deref()).await?;
    if json {
        let cases = report
            .cases
            .iter()
            .map(|c| {
                let (result, detail) = match &c.outcome {
                    Case::Pass => ("pass", String::new()),
                    Case::Fail(d) => ("fail", d.clone()),
                    Case::Unsupported(d) => ("unsupported", d.clone()),
                };
                Row {
                    area: c.area.to_string(),
                    case: c.name,
                    result,
                    detail,
                    ms: c.elapsed.as_millis() as u64,
                }
            })
            .collect();
        out.json(&Report {
            target: &report.target,
            cases,
            cleanup: &report.cleanup,
        })?;
    } else {
        for line in report.to_string().lines() {
            out.line(line)?;
        }
    }
    let failures = report.failures();
    if failures.is_empty() {
        return Ok(());
    }
    Err(Error::new(
        ErrorKind::Other,
        format!(
            "{} conformance case(s) failed: {}",
            failures.len(),
            failures.join("; ")
        ),
    )
    .into())
}
