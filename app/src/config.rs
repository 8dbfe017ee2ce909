//! The config file: `{"cache": {...}, "mappings": {...}}`, or the bare
//! mappings object exactly as JetStream's `setSandboxMapping` takes it; and
//! the embedded default.
//!
//! `mappings` has the JetStream-compatible shape (see docs/CONFIGURATION.md);
//! `cache` holds the four cache settings, which the command-line flags
//! override. With no config file corral uses the embedded default: a File
//! sandbox in `./corral-data` (created) for every user.

use std::path::{Path, PathBuf};

use corral_domain::config::FileSpec;
use corral_domain::template::PathTemplate;
use corral_domain::{Error, ErrorKind, Mappings, Operation, SandboxSpec};
use serde::Deserialize;

use crate::cache::CacheSection;

/// The config file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConfigFile {
    /// Cache settings (flags override them).
    #[serde(default)]
    pub cache: CacheSection,
    /// The sandbox mappings.
    pub mappings: Mappings,
}

/// The directory of the embedded default sandbox.
pub const DEFAULT_SANDBOX_DIR: &str = "corral-data";

fn config_error(message: String) -> Error {
    Error::new(ErrorKind::InvalidInput, message).with_operation(Operation::Configure)
}

impl ConfigFile {
    /// Parses config text; `origin` names it in errors. An object with a
    /// `mappings` or `cache` key is the config file; any other object is the
    /// bare mappings (user → mount → spec), as a JetStream user pastes them.
    pub fn parse(text: &str, origin: &str) -> Result<Self, Error> {
        let value: serde_json::Value =
            serde_json::from_str(text).map_err(|e| config_error(format!("{origin}: {e}")))?;
        let keys: Vec<&String> = value
            .as_object()
            .map(|o| o.keys().collect())
            .unwrap_or_default();
        let sectioned = keys.iter().any(|k| *k == "mappings" || *k == "cache");
        if !sectioned {
            // A section name mistyped would otherwise read as a user's name.
            if let Some(k) = keys
                .iter()
                .find(|k| near("mappings", k) || near("cache", k))
            {
                let meant = if near("mappings", k) {
                    "mappings"
                } else {
                    "cache"
                };
                return Err(config_error(format!(
                    "{origin}: unknown top-level key {k:?}: did you mean `{meant}`? (a config file holds `mappings` and `cache`; bare mappings have user names as keys)"
                )));
            }
            let mappings: Mappings = serde_json::from_value(value)
                .map_err(|e| config_error(format!("{origin}: {e}")))?;
            return Ok(Self {
                cache: CacheSection::default(),
                mappings,
            });
        }
        serde_json::from_value(value).map_err(|e| config_error(format!("{origin}: {e}")))
    }

    /// Reads and parses a config file, warning when it holds secrets and
    /// other users can read it.
    pub fn load(path: &Path) -> Result<Self, Error> {
        let shown = path.display();
        let text = std::fs::read_to_string(path).map_err(|e| {
            let kind = if e.kind() == std::io::ErrorKind::NotFound {
                ErrorKind::NotFound
            } else {
                ErrorKind::InvalidInput
            };
            Error::new(kind, format!("config file {shown}: {e}"))
                .with_operation(Operation::Configure)
        })?;
        let config = Self::parse(&text, &shown.to_string())?;
        if config.has_secrets() {
            use std::os::unix::fs::PermissionsExt;
            if let Ok(meta) = std::fs::metadata(path) {
                let mode = meta.permissions().mode();
                if mode & 0o044 != 0 {
                    tracing::warn!(
                        "config file {shown} holds secrets and is readable by other users (mode {:o}): chmod 600 {shown}",
                        mode & 0o777
                    );
                }
            }
        }
        Ok(config)
    }

    /// Whether any sandbox holds a secret key, session token or proxy password.
    pub fn has_secrets(&self) -> bool {
        self.mappings.entries().any(|(_, _, spec)| match spec {
            SandboxSpec::S3(s) => {
                s.credentials.is_some() || s.proxy.as_ref().is_some_and(|p| p.password.is_some())
            }
            _ => false,
        })
    }

    /// The embedded default: a File sandbox in `dir` (created if missing) for every user.
    pub fn embedded_default(dir: &Path) -> Result<Self, Error> {
        std::fs::create_dir_all(dir).map_err(|e| {
            config_error(format!(
                "cannot create the default sandbox directory {}: {e}",
                dir.display()
            ))
        })?;
        let absolute: PathBuf = dir.canonicalize().unwrap_or_else(|_| dir.to_path_buf());
        // `%` is the placeholder sign: escape it in a literal directory name.
        let literal = absolute.display().to_string().replace('%', "%%");
        let spec = SandboxSpec::File(FileSpec {
            path: PathTemplate::parse("path", &literal)?,
        });
        Ok(Self {
            cache: CacheSection::default(),
            mappings: Mappings::for_all_users(spec),
        })
    }
}

/// Whether `b` is `a` mistyped: another word within two edits, case aside.
fn near(a: &str, b: &str) -> bool {
    if a == b {
        return false;
    }
    let (a, b): (Vec<char>, Vec<char>) = (a.chars().collect(), b.to_lowercase().chars().collect());
    if b.len().abs_diff(a.len()) > 2 {
        return false;
    }
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.iter().enumerate() {
        let mut cur = vec![i + 1];
        for (j, cb) in b.iter().enumerate() {
            cur.push(
                (prev[j] + usize::from(ca != cb))
                    .min(prev[j + 1] + 1)
                    .min(cur[j] + 1),
            );
        }
        prev = cur;
    }
    prev[b.len()] <= 2
}

/// `before` (a config file's text, `shown` naming it) with `user`'s
/// mappings set to `mounts`, or removed (`None`): the whole new text,
/// parsed and checked, so that a bad spec is refused naming the user and
/// the key at fault. Other users' entries and the `cache` section are kept.
pub fn edited_mappings(
    before: &str,
    shown: &str,
    user: &str,
    mounts: Option<serde_json::Value>,
) -> Result<String, Error> {
    let mut value: serde_json::Value =
        serde_json::from_str(before).map_err(|e| config_error(format!("{shown}: {e}")))?;
    let sectioned = value
        .as_object()
        .is_some_and(|o| o.contains_key("mappings") || o.contains_key("cache"));
    let mappings = if sectioned {
        value.get_mut("mappings")
    } else {
        Some(&mut value)
    }
    .and_then(serde_json::Value::as_object_mut)
    .ok_or_else(|| config_error(format!("{shown}: the mappings are not a JSON object")))?;
    match mounts {
        Some(m) => {
            if !m.is_object() {
                return Err(config_error(format!(
                    "the mappings of user {user:?} must be an object of mount points"
                )));
            }
            mappings.insert(user.to_owned(), m);
        }
        None => {
            if mappings.remove(user).is_none() {
                return Err(Error::not_found(format!(
                    "{shown} has no mappings for user {user:?}"
                )));
            }
        }
    }
    let text =
        serde_json::to_string_pretty(&value).map_err(|e| config_error(e.to_string()))? + "\n";
    ConfigFile::parse(&text, &format!("{shown} with user {user:?} changed"))?;
    Ok(text)
}

/// Sets (`Some`) or removes (`None`) the mounts of `user` in the config file
/// at `path`, as JetStream's `setSandboxMapping` and `deleteSandboxMapping`
/// change a running server's mappings (here: the file that servers reload
/// on SIGHUP). The new file is parsed whole before it is written, so a bad
/// spec is refused naming the user and the key at fault and nothing
/// changes; it is written beside the file and renamed over it (its mode
/// kept), and refused if the file changed meanwhile, so that two admins
/// never lose each other's change. Other users' entries and the `cache`
/// section are kept as they were.
pub fn edit_mappings(
    path: &Path,
    user: &str,
    mounts: Option<serde_json::Value>,
) -> Result<(), Error> {
    let shown = path.display().to_string();
    edit_file(path, |before| edited_mappings(before, &shown, user, mounts))
}

/// Replaces the local file at `path` with what `edit` makes of its text:
/// written beside it and renamed over it (its mode kept), and refused if
/// the file changed while it was edited. Nothing changes if `edit` fails.
pub fn edit_file(
    path: &Path,
    edit: impl FnOnce(&str) -> Result<String, Error>,
) -> Result<(), Error> {
    use std::io::Write;
    use std::os::unix::fs::PermissionsExt;

    let shown = path.display().to_string();
    let io = |what: &str, e: std::io::Error| config_error(format!("{what} {shown}: {e}"));
    let before = std::fs::read_to_string(path).map_err(|e| io("cannot read", e))?;
    let text = edit(&before)?;
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let mode = std::fs::metadata(path)
        .map_err(|e| io("cannot read", e))?
        .permissions()
        .mode()
        & 0o777;
    let mut temp = tempfile::Builder::new()
        .prefix(".corral-edit-")
        .permissions(std::fs::Permissions::from_mode(mode))
        .tempfile_in(dir)
        .map_err(|e| io("cannot write beside", e))?;
    temp.write_all(text.as_bytes())
        .and_then(|()| temp.as_file().sync_all())
        .map_err(|e| io("cannot write beside", e))?;
    let now = std::fs::read_to_string(path).map_err(|e| io("cannot read", e))?;
    if now != before {
        return Err(Error::new(
            ErrorKind::Conflict,
            format!("{shown} changed while it was edited; nothing was written: try again"),
        )
        .with_operation(Operation::Configure));
    }
    temp.persist(path)
        .map_err(|e| io("cannot replace", e.error))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_two_sections() {
        let c = ConfigFile::parse(
            r#"{"cache": {"maxCloudCacheSize": "2GiB"}, "mappings": {"": {"": {"type": "Memory"}}}}"#,
            "test",
        )
        .unwrap();
        assert!(!c.has_secrets());
        let e = ConfigFile::parse(r#"{"mapings": {}}"#, "corral.json")
            .unwrap_err()
            .to_string();
        assert!(e.contains("corral.json") && e.contains("mapings"), "{e}");
        let c = ConfigFile::parse(
            r#"{"mappings": {"": {"": {"type": "S3", "bucketName": "bkt", "accessKeyId": "a", "secretKey": "s"}}}}"#,
            "t",
        )
        .unwrap();
        assert!(c.has_secrets());
    }

    #[test]
    fn bare_mappings_work_as_pasted() {
        let c = ConfigFile::parse(
            r#"{"": {"": {"type": "S3", "bucketName": "bkt", "path": "users/%u"}}, "alice": {"archive": "/srv/a"}}"#,
            "jetstream.json",
        )
        .unwrap();
        assert_eq!(c.mappings.entries().count(), 2);
        assert_eq!(c.cache, CacheSection::default());
        // A mistyped section is not taken for a user's name.
        let e = ConfigFile::parse(r#"{"mapping": {"": {"": "/d"}}}"#, "c.json").unwrap_err();
        assert!(e.to_string().contains("did you mean `mappings`?"), "{e}");
        let e = ConfigFile::parse(r#"{"Cache": {}, "": {"": "/d"}}"#, "c.json").unwrap_err();
        assert!(e.to_string().contains("did you mean `cache`?"), "{e}");
        // Bad bare mappings name what is wrong.
        let e = ConfigFile::parse(r#"{"": {"": {"type": "S3"}}}"#, "c.json").unwrap_err();
        assert!(e.to_string().contains("bucketName"), "{e}");
    }
}
