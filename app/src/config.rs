//! The config file: `{"cache": {...}, "mappings": {...}}`, and the embedded default.
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
    /// Parses config text; `origin` names it in errors.
    pub fn parse(text: &str, origin: &str) -> Result<Self, Error> {
        serde_json::from_str(text).map_err(|e| config_error(format!("{origin}: {e}")))
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
}
