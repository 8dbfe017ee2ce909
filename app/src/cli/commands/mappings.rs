//! `corral mappings`: the user's mounts and where they lead, secrets as `***`.

use corral::UserSandbox;
use serde::Serialize;

use crate::cli::output::{Out, Outcome};

#[derive(Serialize)]
struct View<'a> {
    user: &'a str,
    mounts: Vec<corral::MountInfo>,
}

pub(crate) fn run(sb: &UserSandbox, out: &mut Out, json: bool) -> Outcome {
    let user = &sb.view().identity().user;
    let mounts = sb.describe();
    if json {
        return out.json(&View { user, mounts });
    }
    out.line(&format!("user {user}:"))?;
    if !sb.view().has_root_mount() {
        out.line("  /  (read-only: lists the mounts)")?;
    }
    for m in mounts {
        let value = serde_json::to_value(&m).unwrap_or_default();
        let fields: Vec<String> = value
            .as_object()
            .into_iter()
            .flatten()
            .filter(|(k, _)| *k != "mount")
            .map(|(k, v)| {
                let v = v
                    .as_str()
                    .map(str::to_owned)
                    .unwrap_or_else(|| v.to_string());
                format!("{k}={v}")
            })
            .collect();
        out.line(&format!("  {}  {}", m.mount, fields.join(" ")))?;
    }
    Ok(())
}
