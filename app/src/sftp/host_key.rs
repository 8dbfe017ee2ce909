//! The server's host key: ed25519, in OpenSSH format, made on first start
//! (mode 0600) and refused if others can read it.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use corral::{Error, ErrorKind};
use russh::keys::ssh_key::LineEnding;
use russh::keys::{Algorithm, HashAlg, PrivateKey};

fn invalid(path: &Path, message: impl std::fmt::Display) -> Error {
    Error::new(
        ErrorKind::InvalidInput,
        format!("host key {}: {message}", path.display()),
    )
}

/// The host key at `path`, made if there is none.
pub(crate) fn load_or_create(path: &Path) -> Result<PrivateKey, Error> {
    match std::fs::symlink_metadata(path) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let key = PrivateKey::random(&mut russh::keys::key::safe_rng(), Algorithm::Ed25519)
                .map_err(|e| invalid(path, format!("cannot make a key: {e}")))?;
            let text = key
                .to_openssh(LineEnding::LF)
                .map_err(|e| invalid(path, format!("cannot encode the key: {e}")))?;
            // Created with 0600 from the start, never through a link.
            use std::io::Write;
            use std::os::unix::fs::OpenOptionsExt;
            let mut f = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .custom_flags(rustix::fs::OFlags::NOFOLLOW.bits() as i32)
                .open(path)
                .map_err(|e| invalid(path, format!("cannot create it: {e}")))?;
            f.write_all(text.as_bytes())
                .and_then(|()| f.sync_all())
                .map_err(|e| invalid(path, format!("cannot write it: {e}")))?;
            tracing::info!(path = %path.display(), fingerprint = %key.fingerprint(HashAlg::Sha256), "made a new ed25519 host key");
            Ok(key)
        }
        Err(e) => Err(invalid(path, e)),
        Ok(meta) => {
            if !meta.is_file() {
                return Err(invalid(path, "is not a regular file"));
            }
            let mode = meta.permissions().mode() & 0o777;
            if mode & 0o077 != 0 {
                return Err(invalid(
                    path,
                    format!(
                        "is readable by others (mode {mode:o}): chmod 600 {}",
                        path.display()
                    ),
                ));
            }
            let text = std::fs::read_to_string(path).map_err(|e| invalid(path, e))?;
            let key = PrivateKey::from_openssh(text.as_bytes())
                .map_err(|e| invalid(path, format!("not an OpenSSH private key ({e})")))?;
            if key.is_encrypted() {
                return Err(invalid(
                    path,
                    "is encrypted; the server needs it without a passphrase",
                ));
            }
            Ok(key)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn made_once_then_read_and_refused_when_others_can_read_it() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("host_ed25519");
        let made = load_or_create(&path).unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let again = load_or_create(&path).unwrap();
        assert_eq!(made.public_key().key_data(), again.public_key().key_data());
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        let e = load_or_create(&path).unwrap_err().to_string();
        assert!(e.contains("readable by others (mode 644)"), "{e}");
    }
}
