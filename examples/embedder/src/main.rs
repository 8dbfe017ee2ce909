//! Embeds the corral library with its default features off: the same
//! sandboxes and rules as the command, without the command's or the
//! servers' crates (`cargo tree -p corral-embedder` shows none of clap,
//! russh, russh-sftp, argon2 or indicatif).
#![allow(clippy::print_stdout)]

use corral::cache::CacheConfig;
use corral::{Corral, ErrorKind, Identity, MkdirOptions, RenameOptions};

#[tokio::main(flavor = "current_thread")]
async fn main() -> corral::Result<()> {
    let corral = Corral::from_json(
        r#"{"": {"": {"type": "Memory", "path": "users/%u"}}}"#,
        CacheConfig::default(),
    )?;
    let alice = corral.sandbox(&Identity::user("alice"))?;
    alice.mkdir("/inbox", MkdirOptions::default()).await?;
    alice.write("/inbox/a.txt", b"hello", None).await?;
    let keep = RenameOptions { replace: false };
    alice.write("/inbox/b.txt", b"other", None).await?;
    match alice.rename("/inbox/a.txt", "/inbox/b.txt", keep).await {
        Err(e) if e.kind() == ErrorKind::AlreadyExists => {}
        other => panic!("a rename over a file was not refused: {other:?}"),
    }
    assert_eq!(&alice.read("/inbox/a.txt").await?[..], b"hello");
    println!("embedded: wrote, refused a replacing rename, read back");
    Ok(())
}
