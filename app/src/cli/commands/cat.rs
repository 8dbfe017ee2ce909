//! `corral cat PATH`.

use corral::UserSandbox;

use crate::cli::output::{Out, Outcome};

pub(crate) async fn run(sb: &UserSandbox, out: &mut Out, path: &corral::VirtualPath) -> Outcome {
    let mut d = sb.open(path).await?;
    while let Some(chunk) = d.next_chunk().await? {
        out.bytes(&chunk)?;
    }
    Ok(())
}
