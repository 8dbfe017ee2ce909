//! `corral uploads list|abort|lifecycle`: multipart uploads left pending in
//! the user's S3 prefixes, by any tool.

use std::time::Duration;

use corral::{AbortWhich, Error, UserSandbox};
use serde::Serialize;

use crate::cli::args::UploadsCommand;
use crate::cli::output::{Out, Outcome};

#[derive(Serialize)]
struct Aborted {
    aborted: u64,
}

pub(crate) async fn run(
    sb: &UserSandbox,
    out: &mut Out,
    cmd: UploadsCommand,
    json: bool,
) -> Outcome {
    match cmd {
        UploadsCommand::List { older_than } => {
            for u in sb.pending_uploads(older_than).await? {
                if json {
                    out.json(&u)?;
                } else {
                    let age = u
                        .age_seconds
                        .map(|s| humantime::format_duration(Duration::from_secs(s)).to_string())
                        .unwrap_or_else(|| "?".into());
                    let stored = u
                        .stored_bytes
                        .map(corral::human_size)
                        .unwrap_or_else(|| "?".into());
                    out.line(&format!(
                        "{}\t{}\t{}\t{stored}\t{age}",
                        u.path, u.upload_id, u.owner
                    ))?;
                }
            }
            Ok(())
        }
        UploadsCommand::Abort {
            older_than,
            all,
            upload_id,
        } => {
            let which = match (older_than, all, upload_id) {
                (Some(age), _, _) => AbortWhich::OlderThan(age),
                (None, true, _) => AbortWhich::All,
                (None, false, Some(id)) => AbortWhich::Id(id),
                (None, false, None) => {
                    return Err(Error::invalid_input(
                        "say which uploads to abort: --older-than AGE, --all, or an UPLOAD_ID",
                    )
                    .into());
                }
            };
            let aborted = sb.abort_pending_uploads(&which).await?;
            if json {
                out.json(&Aborted { aborted })
            } else {
                out.line(&format!("aborted {aborted} upload(s)"))
            }
        }
        UploadsCommand::Lifecycle { days, replace } => {
            for point in sb.set_upload_expiry(days, replace).await? {
                out.line(&format!(
                    "{point}: incomplete multipart uploads are aborted {days} day(s) after they start"
                ))?;
            }
            Ok(())
        }
    }
}
