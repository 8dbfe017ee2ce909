//! The users file: who may log in, how, and the values of `%d` and `%f`.
//!
//! ```json
//! { "users": {
//!     "alice": { "password": "$argon2id$v=19$m=19456,t=2,p=1$…",
//!                "authorizedKeys": ["ssh-ed25519 AAAAC3… alice@laptop"],
//!                "domain": "example.com", "fullName": "Alice Adams" },
//!     "bob":   { "authorizedKeysFile": "/etc/corral/keys/bob" } } }
//! ```
//!
//! Everything is checked when the file is read (at start and at each
//! reload), and a fault names the user and the key: an unknown key, a hash
//! that is not argon2id, a key that does not parse, a keys file that cannot
//! be read. A user needs a password or at least one key. `corral passwd`
//! prints a hash.

use std::collections::BTreeMap;
use std::path::Path;

use argon2::{Argon2, PasswordHash, PasswordHasher};
use corral::{Error, ErrorKind, Identity};
use ssh_key::AuthorizedKeys;
pub(crate) use ssh_key::PublicKey;

/// One user of the server.
#[derive(Clone)]
pub(crate) struct User {
    /// The argon2id hash, as a PHC string.
    password: Option<String>,
    keys: Vec<PublicKey>,
    domain: Option<String>,
    full_name: Option<String>,
}

impl std::fmt::Debug for User {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the hash.
        f.debug_struct("User")
            .field("password", &self.password.as_ref().map(|_| "***"))
            .field("keys", &self.keys.len())
            .finish_non_exhaustive()
    }
}

/// Every user, by name.
#[derive(Debug, Clone, Default)]
pub(crate) struct Users {
    users: BTreeMap<String, User>,
}

const KEYS: [&str; 5] = [
    "password",
    "authorizedKeys",
    "authorizedKeysFile",
    "domain",
    "fullName",
];

fn invalid(origin: &str, user: &str, key: Option<&str>, message: impl std::fmt::Display) -> Error {
    let at = key.map(|k| format!(" `{k}`")).unwrap_or_default();
    Error::new(
        ErrorKind::InvalidInput,
        format!("users file {origin}: user {user:?}{at}: {message}"),
    )
}

fn string(origin: &str, user: &str, key: &str, v: &serde_json::Value) -> Result<String, Error> {
    v.as_str()
        .map(str::to_owned)
        .ok_or_else(|| invalid(origin, user, Some(key), "must be a string"))
}

/// A hash of `password` for the users file (argon2id, a random salt).
pub(crate) fn hash_password(password: &str) -> Result<String, Error> {
    Argon2::default()
        .hash_password(password.as_bytes())
        .map(|h| h.to_string())
        .map_err(|e| Error::new(ErrorKind::Other, format!("cannot hash the password: {e}")))
}

/// A hash that no password matches, verified for unknown users so that a
/// failed login takes as long whoever it names.
fn decoy() -> &'static str {
    static DECOY: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    DECOY.get_or_init(|| {
        hash_password("corral decoy: no user has this password")
            .unwrap_or_else(|_| "$argon2id$v=19$m=19456,t=2,p=1$AAAAAAAAAAAAAAAAAAAAAA$AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA".to_owned())
    })
}

/// `before` (a users file's text, `origin` naming it) with `user`'s entry
/// set to `entry` or removed (`None`): the whole new text, checked as a
/// server reads it (a bad entry is refused naming the user and the field).
pub(crate) fn edited(
    before: &str,
    origin: &str,
    dir: &Path,
    user: &str,
    entry: Option<serde_json::Value>,
) -> Result<String, Error> {
    let bad = |m: String| Error::new(ErrorKind::InvalidInput, format!("users file {origin}: {m}"));
    let mut value: serde_json::Value =
        serde_json::from_str(before).map_err(|e| bad(e.to_string()))?;
    let users = value
        .get_mut("users")
        .and_then(serde_json::Value::as_object_mut)
        .ok_or_else(|| bad("no `users` object".to_owned()))?;
    match entry {
        Some(e) => {
            users.insert(user.to_owned(), e);
        }
        None => {
            if users.remove(user).is_none() {
                return Err(Error::not_found(format!(
                    "users file {origin} has no user {user:?}"
                )));
            }
        }
    }
    let text = serde_json::to_string_pretty(&value).map_err(|e| bad(e.to_string()))? + "\n";
    Users::parse(&text, &format!("{origin} with user {user:?} changed"), dir)?;
    Ok(text)
}

impl Users {
    /// Reads and checks the users file at `path`.
    pub(crate) fn load(path: &Path) -> Result<Self, Error> {
        let origin = path.display().to_string();
        {
            use std::os::unix::fs::PermissionsExt;
            if let Ok(meta) = std::fs::metadata(path)
                && meta.permissions().mode() & 0o044 != 0
            {
                tracing::warn!(
                    "users file {origin} is readable by other users (mode {:o}): its password hashes can be attacked offline; chmod 600 {origin}",
                    meta.permissions().mode() & 0o777
                );
            }
        }
        let text = std::fs::read_to_string(path).map_err(|e| {
            Error::new(ErrorKind::InvalidInput, format!("users file {origin}: {e}"))
        })?;
        Self::parse(&text, &origin, path.parent().unwrap_or(Path::new(".")))
    }

    /// Parses users file text; `origin` names it, relative keys files are
    /// read from `dir`.
    pub(crate) fn parse(text: &str, origin: &str, dir: &Path) -> Result<Self, Error> {
        let value: serde_json::Value = serde_json::from_str(text).map_err(|e| {
            Error::new(ErrorKind::InvalidInput, format!("users file {origin}: {e}"))
        })?;
        let top = value.as_object().ok_or_else(|| {
            Error::new(
                ErrorKind::InvalidInput,
                format!("users file {origin}: must be an object with `users`"),
            )
        })?;
        if let Some(k) = top.keys().find(|k| *k != "users") {
            return Err(Error::new(
                ErrorKind::InvalidInput,
                format!("users file {origin}: unknown key `{k}` (the file holds `users`)"),
            ));
        }
        let Some(entries) = top.get("users").and_then(|u| u.as_object()) else {
            return Err(Error::new(
                ErrorKind::InvalidInput,
                format!("users file {origin}: `users` must be an object of user names"),
            ));
        };
        let mut users = BTreeMap::new();
        for (name, entry) in entries {
            if name.is_empty() || name.chars().any(|c| c.is_control() || c == '/') {
                return Err(invalid(origin, name, None, "is not a valid user name"));
            }
            let Some(fields) = entry.as_object() else {
                return Err(invalid(origin, name, None, "must be an object"));
            };
            if let Some(k) = fields.keys().find(|k| !KEYS.contains(&k.as_str())) {
                return Err(invalid(
                    origin,
                    name,
                    Some(k),
                    format!("unknown key; the keys are {}", KEYS.join(", ")),
                ));
            }
            let password = match fields.get("password") {
                None => None,
                Some(v) => {
                    let phc = string(origin, name, "password", v)?;
                    let parsed = PasswordHash::new(&phc).map_err(|e| {
                        invalid(
                            origin,
                            name,
                            Some("password"),
                            format!("not a PHC hash ({e}); `corral passwd` prints one"),
                        )
                    })?;
                    if parsed.algorithm.as_str() != "argon2id" {
                        return Err(invalid(
                            origin,
                            name,
                            Some("password"),
                            format!(
                                "is a {} hash; only argon2id is accepted (`corral passwd` prints one)",
                                parsed.algorithm
                            ),
                        ));
                    }
                    Some(phc)
                }
            };
            let mut keys = Vec::new();
            if let Some(v) = fields.get("authorizedKeys") {
                let lines = v.as_array().ok_or_else(|| {
                    invalid(
                        origin,
                        name,
                        Some("authorizedKeys"),
                        "must be a list of public keys",
                    )
                })?;
                for (i, line) in lines.iter().enumerate() {
                    let line = string(origin, name, "authorizedKeys", line)?;
                    keys.extend(parse_keys(&line).map_err(|e| {
                        invalid(
                            origin,
                            name,
                            Some("authorizedKeys"),
                            format!("key {}: {e}", i + 1),
                        )
                    })?);
                }
            }
            if let Some(v) = fields.get("authorizedKeysFile") {
                let file = string(origin, name, "authorizedKeysFile", v)?;
                let path = dir.join(&file);
                let text = std::fs::read_to_string(&path).map_err(|e| {
                    invalid(
                        origin,
                        name,
                        Some("authorizedKeysFile"),
                        format!("{file}: {e}"),
                    )
                })?;
                keys.extend(parse_keys(&text).map_err(|e| {
                    invalid(
                        origin,
                        name,
                        Some("authorizedKeysFile"),
                        format!("{file}: {e}"),
                    )
                })?);
            }
            if password.is_none() && keys.is_empty() {
                return Err(invalid(
                    origin,
                    name,
                    None,
                    "has neither a password nor an authorized key: it could never log in",
                ));
            }
            let domain = fields
                .get("domain")
                .map(|v| string(origin, name, "domain", v))
                .transpose()?;
            let full_name = fields
                .get("fullName")
                .map(|v| string(origin, name, "fullName", v))
                .transpose()?;
            users.insert(
                name.clone(),
                User {
                    password,
                    keys,
                    domain,
                    full_name,
                },
            );
        }
        Ok(Self { users })
    }

    /// How many users there are.
    pub(crate) fn len(&self) -> usize {
        self.users.len()
    }

    /// Whether `password` is `user`'s. Takes as long for an unknown user
    /// (a decoy hash is verified) and never says which it was. Blocking: run
    /// it off the async threads.
    pub(crate) fn password_matches(&self, user: &str, password: &str) -> bool {
        let known: Option<&str> = self.users.get(user).and_then(|u| u.password.as_deref());
        let phc: &str = match known {
            Some(p) => p,
            None => decoy(),
        };
        let ok = verify(password, phc).unwrap_or(false);
        ok && known.is_some()
    }

    /// Whether `key` is one of `user`'s authorized keys.
    // Public-key logins are SSH's.
    #[cfg_attr(not(feature = "sftp"), allow(dead_code))]
    pub(crate) fn key_matches(&self, user: &str, key: &PublicKey) -> bool {
        self.users
            .get(user)
            .is_some_and(|u| u.keys.iter().any(|k| k.key_data() == key.key_data()))
    }

    /// The identity a logged-in user's sandbox is resolved with.
    pub(crate) fn identity(&self, user: &str) -> Option<Identity> {
        let u = self.users.get(user)?;
        Some(Identity {
            user: user.to_owned(),
            domain: u.domain.clone(),
            full_name: u.full_name.clone(),
        })
    }
}

thread_local! {
    /// The memory an argon2 check works in, kept by the thread that checks:
    /// allocated afresh for each check (19 MiB), it was never given back by
    /// glibc's allocator once its mmap threshold had grown.
    static BLOCKS: std::cell::RefCell<Vec<argon2::Block>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// Whether `password` matches the argon2 PHC hash `phc`, computed in this
/// thread's reused memory; the comparison is constant-time.
fn verify(password: &str, phc: &str) -> Option<bool> {
    let hash = PasswordHash::new(phc).ok()?;
    let params = argon2::Params::try_from(&hash).ok()?;
    let algorithm = argon2::Algorithm::try_from(hash.algorithm.as_str()).ok()?;
    let version = match hash.version {
        Some(v) => argon2::Version::try_from(v).ok()?,
        None => argon2::Version::default(),
    };
    let (salt, expected) = (hash.salt?, hash.hash?);
    let mut out = vec![0u8; expected.len()];
    let computed = BLOCKS.with_borrow_mut(|blocks| {
        blocks.resize(params.block_count(), argon2::Block::default());
        Argon2::new(algorithm, version, params).hash_password_into_with_memory(
            password.as_bytes(),
            salt.as_ref(),
            &mut out,
            &mut blocks[..],
        )
    });
    computed.ok()?;
    // Output's equality is constant-time.
    Some(argon2::password_hash::phc::Output::new(&out).ok()? == expected)
}

/// The keys of authorized_keys text: one per line, options allowed, `#`
/// comments and blank lines skipped.
fn parse_keys(text: &str) -> Result<Vec<PublicKey>, String> {
    let mut out = Vec::new();
    for entry in AuthorizedKeys::new(text) {
        let entry = entry.map_err(|e| format!("not an OpenSSH public key ({e})"))?;
        out.push(entry.public_key().clone());
    }
    if out.is_empty() {
        return Err("holds no public key".to_owned());
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &str = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIGmLp9Z1J9dUR8VJZ7Slkxv8c7zKIXdMzR02cyc4xG8F test@corral";

    fn parse(json: &str) -> Result<Users, String> {
        Users::parse(json, "users.json", Path::new("/nonexistent")).map_err(|e| e.to_string())
    }

    #[test]
    fn users_log_in_with_a_password_or_a_key() {
        let hash = hash_password("s3cret").unwrap();
        let users = parse(&format!(
            r#"{{"users": {{"alice": {{"password": "{hash}", "domain": "d.example", "fullName": "Alice A"}}, "bob": {{"authorizedKeys": ["{KEY}"]}}}}}}"#
        ))
        .unwrap();
        assert!(users.password_matches("alice", "s3cret"));
        assert!(!users.password_matches("alice", "wrong"));
        assert!(!users.password_matches("nobody", "s3cret"));
        assert!(!users.password_matches("bob", ""));
        let key = PublicKey::from_openssh(KEY.trim_end_matches(" test@corral")).unwrap();
        assert!(
            users.key_matches("bob", &key),
            "the comment does not matter"
        );
        assert!(!users.key_matches("alice", &key));
        let id = users.identity("alice").unwrap();
        assert_eq!(
            (id.domain.as_deref(), id.full_name.as_deref()),
            (Some("d.example"), Some("Alice A"))
        );
        assert!(
            !format!("{users:?}").contains("argon2"),
            "no hash in Debug output"
        );
    }

    #[test]
    fn faults_name_the_user_and_the_key() {
        for (json, want) in [
            (
                r#"{"users": {"alice": {"pasword": "x"}}}"#,
                r#"user "alice" `pasword`: unknown key"#,
            ),
            (
                r#"{"users": {"alice": {"password": "plain"}}}"#,
                r#"user "alice" `password`: not a PHC hash"#,
            ),
            (
                r#"{"users": {"alice": {"password": "$argon2i$v=19$m=19456,t=2,p=1$c2FsdHNhbHRzYWx0$aGFzaGhhc2hoYXNoaGFzaGhhc2hoYXNoaGFzaGhhc2g"}}}"#,
                "only argon2id is accepted",
            ),
            (
                r#"{"users": {"bob": {"authorizedKeys": ["ssh-ed25519 nope"]}}}"#,
                r#"user "bob" `authorizedKeys`: key 1: not an OpenSSH public key"#,
            ),
            (
                r#"{"users": {"bob": {"authorizedKeysFile": "missing.pub"}}}"#,
                r#"user "bob" `authorizedKeysFile`: missing.pub"#,
            ),
            (
                r#"{"users": {"carol": {}}}"#,
                "neither a password nor an authorized key",
            ),
            (r#"{"user": {}}"#, "unknown key `user`"),
        ] {
            let e = parse(json).unwrap_err();
            assert!(e.contains(want), "{json}\n  got: {e}\n  want: {want}");
            assert!(e.starts_with("users file users.json: "), "{e}");
        }
    }
}
