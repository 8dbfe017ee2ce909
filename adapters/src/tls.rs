//! Trust settings: `caFile`, `caPath` and `verifySSL`.
//!
//! When `caFile` or `caPath` is given, the certificates found there *replace*
//! the system trust store (like curl's `--cacert` / `--capath`): a sandbox
//! pinned to a private CA should not also trust every public one. Both may
//! be given; their certificates add up.

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use corral_domain::{Error, ErrorKind, Operation, Result};

/// The PEM text of every CA certificate configured, one block per certificate.
#[derive(Debug, Clone, Default)]
pub(crate) struct CaBundle {
    /// One PEM block per certificate, deduplicated.
    pub(crate) pems: Vec<String>,
}

fn config_err(key: &str, message: String) -> Error {
    Error::new(ErrorKind::InvalidInput, format!("`{key}`: {message}"))
        .with_operation(Operation::Configure)
}

/// Splits PEM text into its CERTIFICATE blocks.
fn certificate_blocks(text: &str) -> Vec<String> {
    const BEGIN: &str = "-----BEGIN CERTIFICATE-----";
    const END: &str = "-----END CERTIFICATE-----";
    let mut out = Vec::new();
    let mut rest = text;
    while let Some(start) = rest.find(BEGIN) {
        let Some(len) = rest[start..].find(END) else {
            break;
        };
        let end = start + len + END.len();
        out.push(format!("{}\n", &rest[start..end]));
        rest = &rest[end..];
    }
    out
}

/// Whether a PEM block is a certificate that the TLS stack can load.
fn loads(pem: &str) -> bool {
    object_store::Certificate::from_pem(pem.as_bytes()).is_ok()
}

impl CaBundle {
    /// Loads `caFile` and/or `caPath`; `None` when neither is set.
    pub(crate) fn load(ca_file: Option<&str>, ca_path: Option<&str>) -> Result<Option<Self>> {
        if ca_file.is_none() && ca_path.is_none() {
            return Ok(None);
        }
        let mut seen = HashSet::new();
        let mut pems = Vec::new();
        if let Some(file) = ca_file {
            let text = std::fs::read_to_string(file)
                .map_err(|e| config_err("caFile", format!("cannot read {file}: {e}")))?;
            let blocks: Vec<String> = certificate_blocks(&text)
                .into_iter()
                .filter(|b| loads(b))
                .collect();
            if blocks.is_empty() {
                return Err(config_err(
                    "caFile",
                    format!("{file} holds no PEM certificate (-----BEGIN CERTIFICATE-----)"),
                ));
            }
            pems.extend(blocks.into_iter().filter(|b| seen.insert(b.clone())));
        }
        if let Some(dir) = ca_path {
            let found = load_dir(Path::new(dir))?;
            if found.is_empty() {
                return Err(config_err(
                    "caPath",
                    format!("{dir} holds no PEM certificate file"),
                ));
            }
            pems.extend(found.into_iter().filter(|b| seen.insert(b.clone())));
        }
        Ok(Some(Self { pems }))
    }

    /// The certificates as `object_store` roots.
    pub(crate) fn certificates(&self) -> Result<Vec<object_store::Certificate>> {
        self.pems
            .iter()
            .map(|p| {
                object_store::Certificate::from_pem(p.as_bytes())
                    .map_err(|e| config_err("caFile", format!("certificate rejected: {e}")))
            })
            .collect()
    }

    /// All certificates as one PEM text (for the proxy's trust).
    pub(crate) fn pem_text(&self) -> String {
        self.pems.concat()
    }
}

/// Every certificate in the regular files of `dir` (symlinks followed, the
/// hashed links of `openssl rehash` landing on the same certificate once).
fn load_dir(dir: &Path) -> Result<Vec<String>> {
    let entries = std::fs::read_dir(dir).map_err(|e| {
        config_err(
            "caPath",
            format!("cannot read directory {}: {e}", dir.display()),
        )
    })?;
    let mut files: Vec<PathBuf> = entries.filter_map(|e| e.ok().map(|e| e.path())).collect();
    files.sort();
    let mut out = Vec::new();
    let mut seen_files = HashSet::new();
    for f in files {
        let Ok(canonical) = std::fs::canonicalize(&f) else {
            continue;
        };
        if !canonical.is_file() || !seen_files.insert(canonical.clone()) {
            continue;
        }
        // Unreadable or non-PEM files (an index, a README) are skipped, like curl does.
        let Ok(text) = std::fs::read_to_string(&canonical) else {
            continue;
        };
        out.extend(certificate_blocks(&text).into_iter().filter(|b| loads(b)));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_and_empty_files_are_named() {
        let e = CaBundle::load(Some("/nonexistent/ca.pem"), None).unwrap_err();
        assert!(
            e.to_string()
                .contains("`caFile`: cannot read /nonexistent/ca.pem"),
            "{e}"
        );
        let dir = std::env::temp_dir().join(format!("corral-tls-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let junk = dir.join("junk.pem");
        std::fs::write(&junk, "not a certificate").unwrap();
        let e = CaBundle::load(Some(junk.to_str().unwrap()), None).unwrap_err();
        assert!(e.to_string().contains("holds no PEM certificate"), "{e}");
        let e = CaBundle::load(None, Some(dir.to_str().unwrap())).unwrap_err();
        assert!(e.to_string().contains("`caPath`"), "{e}");
        std::fs::remove_dir_all(&dir).unwrap();
        assert!(CaBundle::load(None, None).unwrap().is_none());
    }

    #[test]
    fn blocks_are_split() {
        let two = "x\n-----BEGIN CERTIFICATE-----\nAAA\n-----END CERTIFICATE-----\ny\n-----BEGIN CERTIFICATE-----\nBBB\n-----END CERTIFICATE-----\n";
        assert_eq!(certificate_blocks(two).len(), 2);
    }
}
