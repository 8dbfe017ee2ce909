//! Testing code that uses corral without S3: the same mappings with
//! `"type": "Memory"` give every test a private, in-process sandbox with the
//! same rules (paths, confinement, overwrite decisions, the cache).
//!
//! ```sh
//! cargo test -p corral --example testing
//! ```
#![allow(clippy::print_stdout)]

use corral::UserSandbox;

/// Code under test: archives a user's upload under a dated name.
pub async fn archive(
    sandbox: &UserSandbox,
    name: &str,
    data: &[u8],
    date: &str,
) -> Result<String, corral::Error> {
    let path = format!("/archive/{date}/{name}");
    sandbox
        .mkdir(
            &format!("/archive/{date}"),
            corral::MkdirOptions { parents: true },
        )
        .await?;
    sandbox.write(&path, data, None).await?;
    Ok(path)
}

fn main() {
    println!("run the tests: cargo test -p corral --example testing");
}

#[cfg(test)]
mod tests {
    use super::*;
    use corral::Corral;
    use corral::cache::CacheConfig;
    use corral::{ErrorKind, Identity};

    /// In production this mapping says `"type": "S3"`; in tests, `"Memory"`.
    fn sandbox(user: &str) -> (Corral, UserSandbox) {
        let corral = Corral::from_json(
            r#"{"": {"": {"type": "Memory", "path": "users/%u"}}}"#,
            CacheConfig::default(),
        )
        .expect("corral");
        let sb = corral.sandbox(&Identity::user(user)).expect("sandbox");
        (corral, sb)
    }

    #[tokio::test]
    async fn archives_under_the_date() {
        let (_corral, sb) = sandbox("alice");
        let path = archive(&sb, "a.txt", b"hello", "2026-11-28")
            .await
            .expect("archive");
        assert_eq!(path, "/archive/2026-11-28/a.txt");
        assert_eq!(&sb.read(&path).await.expect("read")[..], b"hello");
    }

    #[tokio::test]
    async fn hostile_names_stay_in_the_sandbox() {
        let (_corral, sb) = sandbox("alice");
        let err = archive(&sb, "../../../etc/passwd", b"x", "..")
            .await
            .unwrap_err();
        assert_eq!(err.kind(), ErrorKind::EscapesSandbox);
    }
}
