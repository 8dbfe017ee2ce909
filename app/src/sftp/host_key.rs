//! The server's host keys, in OpenSSH format, made on first start (mode
//! 0600, in a directory made 0700 if missing) and refused if others can
//! read them. Besides ed25519, an ECDSA P-256 key: clients such as JSch
//! 0.1.x (bundled by many enterprise tools) know no ed25519 host key.

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

/// The algorithm of a key to make at `path`: by its name (`…ecdsa…` is
/// ECDSA P-256), ed25519 otherwise.
fn algorithm_for(path: &Path) -> Algorithm {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().to_ascii_lowercase())
        .unwrap_or_default();
    if name.contains("ecdsa") {
        Algorithm::Ecdsa {
            curve: russh::keys::EcdsaCurve::NistP256,
        }
    } else {
        Algorithm::Ed25519
    }
}

/// Where the ECDSA key kept beside the ed25519 key at `path` is:
/// `ed25519` in its name becomes `ecdsa` (`host_ed25519` → `host_ecdsa`),
/// or `_ecdsa` is added.
pub(crate) fn ecdsa_beside(path: &Path) -> std::path::PathBuf {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let new = if name.contains("ed25519") {
        name.replacen("ed25519", "ecdsa", 1)
    } else {
        format!("{name}_ecdsa")
    };
    path.with_file_name(new)
}

/// The host keys at `paths`, made where missing. With one path only, an
/// ECDSA P-256 key is kept beside it too ([`ecdsa_beside`]) unless it is
/// one, so that every common client finds a host key it knows.
pub(crate) fn load_all(paths: &[std::path::PathBuf]) -> Result<Vec<PrivateKey>, Error> {
    let mut paths = paths.to_vec();
    let mut keys = paths
        .iter()
        .map(|p| load_or_create(p))
        .collect::<Result<Vec<_>, _>>()?;
    if let [only] = paths.as_slice()
        && !keys
            .iter()
            .any(|k| matches!(k.algorithm(), Algorithm::Ecdsa { .. }))
    {
        let beside = ecdsa_beside(only);
        keys.push(load_or_create(&beside)?);
        paths.push(beside);
    }
    for (k, p) in keys.iter().zip(&paths) {
        tracing::info!(
            key = %p.display(),
            algorithm = %k.algorithm(),
            fingerprint = %k.fingerprint(HashAlg::Sha256),
            "host key"
        );
    }
    Ok(keys)
}

/// The host key at `path`, made if there is none.
pub(crate) fn load_or_create(path: &Path) -> Result<PrivateKey, Error> {
    match std::fs::symlink_metadata(path) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty())
                && !dir.exists()
            {
                use std::os::unix::fs::DirBuilderExt;
                std::fs::DirBuilder::new()
                    .recursive(true)
                    .mode(0o700)
                    .create(dir)
                    .map_err(|e| invalid(path, format!("cannot create its directory: {e}")))?;
            }
            let algorithm = algorithm_for(path);
            let key = PrivateKey::random(&mut russh::keys::key::safe_rng(), algorithm.clone())
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
            tracing::info!(path = %path.display(), %algorithm, fingerprint = %key.fingerprint(HashAlg::Sha256), "made a new host key");
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
    fn an_ecdsa_key_is_kept_beside_a_lone_ed25519_key() {
        let dir = tempfile::tempdir().unwrap();
        // The directory is made (0700) if missing.
        let path = dir.path().join("keys/host_ed25519");
        let keys = load_all(std::slice::from_ref(&path)).unwrap();
        assert_eq!(keys.len(), 2);
        assert_eq!(keys[0].algorithm(), Algorithm::Ed25519);
        assert!(matches!(keys[1].algorithm(), Algorithm::Ecdsa { .. }));
        assert!(dir.path().join("keys/host_ecdsa").exists());
        let mode = std::fs::metadata(dir.path().join("keys"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o700);
        assert_eq!(
            ecdsa_beside(Path::new("/k/server")),
            Path::new("/k/server_ecdsa")
        );
        // Given explicitly, keys are what their names say; nothing is added.
        let two = [dir.path().join("a_ecdsa"), dir.path().join("b")];
        let keys = load_all(&two).unwrap();
        assert_eq!(keys.len(), 2);
        assert!(matches!(keys[0].algorithm(), Algorithm::Ecdsa { .. }));
    }

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
