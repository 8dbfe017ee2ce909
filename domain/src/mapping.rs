//! Sandbox mappings in the JetStream-compatible shape, and a user's view.
//!
//! ```json
//! { "":      { "": { "type": "S3", "bucketName": "b", "path": "users/%u" } },
//!   "alice": { "archive": "/srv/archive/alice" } }
//! ```
//!
//! The outer key is a user name, or `""` for every user; the inner key is a
//! mount point, or `""` (or `/`) for the root of the user's view.
//!
//! Resolution for a user ([`Mappings::resolve`]):
//! - the all-users entries apply to everyone; the user's own entries replace
//!   an all-users entry with the same mount point and add the others;
//! - a user with neither is refused ([`ResolveError::NoSandboxForUser`]);
//! - mount points other than the root appear as directories of the user's
//!   view; without a root mount the root is a read-only directory that lists
//!   the mounts;
//! - a path belongs to the mount with the longest matching mount point, and
//!   is resolved inside that mount's sandbox only.

use std::collections::BTreeMap;
use std::fmt;

use serde::de::{Deserialize, Deserializer, Error as _};

use crate::config::{ConfigError, S3Spec, SandboxSpec};
use crate::error::{Error, ErrorKind, Operation};
use crate::key::SandboxRoot;
use crate::path::VirtualPath;
use crate::raw::{RawSpec, UniqueMap};
use crate::template::{Identity, PlaceholderError};

/// Validated mappings: per user (or `""` for all users), mount point → spec.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Mappings {
    users: BTreeMap<String, Vec<(VirtualPath, SandboxSpec)>>,
}

fn context(user: &str, mount: &str) -> String {
    let who = if user.is_empty() {
        "all users (\"\")".to_owned()
    } else {
        format!("user {user:?}")
    };
    let at = if mount.is_empty() || mount == "/" {
        "the root mount".to_owned()
    } else {
        format!("mount {mount:?}")
    };
    format!("mapping for {who}, {at}")
}

impl Mappings {
    /// Mappings that give every user the same spec at the root.
    pub fn for_all_users(spec: SandboxSpec) -> Self {
        let mut users = BTreeMap::new();
        users.insert(String::new(), vec![(VirtualPath::ROOT, spec)]);
        Self { users }
    }

    /// Adds (or replaces) one entry. `user` is `""` for all users; `mount` as in the JSON.
    pub fn insert(
        &mut self,
        user: &str,
        mount: &str,
        spec: SandboxSpec,
    ) -> Result<(), ConfigError> {
        let point = parse_mount(mount).map_err(|e| e.in_context(context(user, mount)))?;
        let mounts = self.users.entry(user.to_owned()).or_default();
        mounts.retain(|(p, _)| *p != point);
        mounts.push((point, spec));
        mounts.sort_by(|a, b| a.0.cmp(&b.0));
        Ok(())
    }

    fn from_raw(raw: UniqueMap<UniqueMap<RawSpec>>) -> Result<Self, ConfigError> {
        let mut users = BTreeMap::new();
        for (user, UniqueMap(mounts)) in raw.0 {
            let mut parsed: Vec<(VirtualPath, SandboxSpec)> = Vec::new();
            let mut written: Vec<String> = Vec::new();
            for (mount, spec) in mounts {
                let ctx = context(&user, &mount);
                let point = parse_mount(&mount).map_err(|e| e.in_context(&ctx))?;
                if let Some(i) = parsed.iter().position(|(p, _)| *p == point) {
                    return Err(ConfigError::new(
                        None,
                        format!(
                            "mount keys {:?} and {mount:?} name the same mount point {point}",
                            written[i]
                        ),
                    )
                    .in_context(ctx));
                }
                let spec = SandboxSpec::from_raw(spec).map_err(|e| e.in_context(&ctx))?;
                parsed.push((point, spec));
                written.push(mount);
            }
            parsed.sort_by(|a, b| a.0.cmp(&b.0));
            users.insert(user, parsed);
        }
        Ok(Self { users })
    }

    /// The user names with entries of their own (not `""`).
    pub fn users(&self) -> impl Iterator<Item = &str> {
        self.users
            .keys()
            .map(String::as_str)
            .filter(|u| !u.is_empty())
    }

    /// Whether nothing is mapped at all.
    pub fn is_empty(&self) -> bool {
        self.users.values().all(Vec::is_empty)
    }

    /// Every spec, with its user and mount point (for `check` and listings of the config).
    pub fn entries(&self) -> impl Iterator<Item = (&str, &VirtualPath, &SandboxSpec)> {
        self.users
            .iter()
            .flat_map(|(u, ms)| ms.iter().map(move |(p, s)| (u.as_str(), p, s)))
    }

    /// The view of `identity`; see the [module docs](self).
    pub fn resolve(&self, identity: &Identity) -> Result<UserView, ResolveError> {
        if identity.user.is_empty() {
            return Err(ResolveError::EmptyUser);
        }
        let all = self.users.get("");
        let own = self.users.get(&identity.user);
        if all.is_none_or(Vec::is_empty) && own.is_none_or(Vec::is_empty) {
            return Err(ResolveError::NoSandboxForUser {
                user: identity.user.clone(),
            });
        }
        let mut chosen: BTreeMap<VirtualPath, (&SandboxSpec, &str)> = BTreeMap::new();
        for (source, mounts) in [("", all), (identity.user.as_str(), own)] {
            for (point, spec) in mounts.into_iter().flatten() {
                chosen.insert(point.clone(), (spec, source));
            }
        }
        let mut mounts = Vec::with_capacity(chosen.len());
        for (point, (spec, source)) in chosen {
            let resolved = ResolvedSpec::new(spec, identity, &context(source, point.as_str()))?;
            mounts.push(Mount {
                point,
                spec: resolved,
            });
        }
        Ok(UserView {
            identity: identity.clone(),
            mounts,
        })
    }
}

fn parse_mount(mount: &str) -> Result<VirtualPath, ConfigError> {
    VirtualPath::parse(mount)
        .map_err(|e| ConfigError::new(None, format!("mount point {mount:?} is invalid: {e}")))
}

impl<'de> Deserialize<'de> for Mappings {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let raw = UniqueMap::<UniqueMap<RawSpec>>::deserialize(d)?;
        Self::from_raw(raw).map_err(D::Error::custom)
    }
}

/// Why a user's view could not be built.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ResolveError {
    /// No entry for the user and none for all users.
    #[error(
        "no sandbox is mapped for user {user:?}: add an entry for this user or an all-users (\"\") entry"
    )]
    NoSandboxForUser {
        /// The user.
        user: String,
    },
    /// The user name is empty.
    #[error("the user name is empty")]
    EmptyUser,
    /// A placeholder value was refused.
    #[error("{context}: {source}")]
    Placeholder {
        /// Which mapping.
        context: String,
        /// Why.
        source: PlaceholderError,
    },
    /// The expanded path is not a valid prefix.
    #[error("{context}: {message}")]
    InvalidPath {
        /// Which mapping.
        context: String,
        /// Why.
        message: String,
    },
}

impl From<ResolveError> for Error {
    fn from(e: ResolveError) -> Self {
        let kind = match e {
            ResolveError::NoSandboxForUser { .. } => ErrorKind::PermissionDenied,
            _ => ErrorKind::InvalidInput,
        };
        Error::new(kind, e.to_string()).with_operation(Operation::Resolve)
    }
}

/// A spec with its placeholders expanded for one user.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum ResolvedSpec {
    /// A local directory.
    File {
        /// The directory.
        dir: String,
        /// The directory its template fixes (see
        /// [`crate::template::PathTemplate::literal_base`]): `dir` below it
        /// is the user's own, which a server may create on first login.
        base: Option<String>,
    },
    /// An S3 prefix.
    S3 {
        /// The bucket and connection settings (`path` unexpanded).
        spec: Box<S3Spec>,
        /// The expanded prefix.
        root: SandboxRoot,
    },
    /// A prefix of the in-memory store.
    Memory {
        /// The expanded prefix.
        root: SandboxRoot,
    },
    /// A prefix of a backend registered in code.
    Custom {
        /// The name it was registered under.
        backend: String,
        /// The expanded prefix.
        root: SandboxRoot,
    },
}

impl ResolvedSpec {
    fn new(spec: &SandboxSpec, identity: &Identity, context: &str) -> Result<Self, ResolveError> {
        let expanded =
            spec.path()
                .expand(identity)
                .map_err(|source| ResolveError::Placeholder {
                    context: context.to_owned(),
                    source,
                })?;
        // The template's shape was checked at load; what is left to fail here
        // is the length once the user's values are in.
        let root = |s: &str| {
            SandboxRoot::new(s).map_err(|e| ResolveError::InvalidPath {
                context: context.to_owned(),
                message: format!("the sandbox prefix for this user is invalid: {e}"),
            })
        };
        Ok(match spec {
            SandboxSpec::File(f) => Self::File {
                dir: expanded,
                base: f.path.literal_base(),
            },
            SandboxSpec::S3(s) => Self::S3 {
                root: root(&expanded)?,
                spec: s.clone(),
            },
            SandboxSpec::Memory(_) => Self::Memory {
                root: root(&expanded)?,
            },
            SandboxSpec::Custom(c) => Self::Custom {
                backend: c.backend.clone(),
                root: root(&expanded)?,
            },
        })
    }

    /// `File`, `S3` or `Memory`.
    pub fn type_name(&self) -> &'static str {
        match self {
            Self::File { .. } => "File",
            Self::S3 { .. } => "S3",
            Self::Memory { .. } => "Memory",
            Self::Custom { .. } => "Custom",
        }
    }
}

/// One mount of a user's view.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mount {
    /// Where it appears in the user's view (the root is the empty path).
    pub point: VirtualPath,
    /// What it is.
    pub spec: ResolvedSpec,
}

/// Where a virtual path of a user's view leads.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Location<'a> {
    /// Inside a mount, at `inner` relative to its sandbox root.
    Mount {
        /// The mount.
        mount: &'a Mount,
        /// Its position in [`UserView::mounts`].
        index: usize,
        /// The path inside the mount's sandbox.
        inner: VirtualPath,
    },
    /// A read-only directory that exists only because mounts lie below it.
    Virtual,
}

/// What one user sees: their mounts, resolved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserView {
    identity: Identity,
    /// Sorted by mount point, so the root (if any) is first.
    mounts: Vec<Mount>,
}

impl UserView {
    /// Whom this view is for.
    pub fn identity(&self) -> &Identity {
        &self.identity
    }

    /// The mounts, sorted by mount point.
    pub fn mounts(&self) -> &[Mount] {
        &self.mounts
    }

    /// Whether the root is a mount (otherwise it is a read-only list of mounts).
    pub fn has_root_mount(&self) -> bool {
        self.mounts.first().is_some_and(|m| m.point.is_root())
    }

    /// Where `path` leads: the mount with the longest matching mount point, or a
    /// virtual directory above mounts, or nowhere ([`ErrorKind::NotFound`]).
    pub fn locate(&self, path: &VirtualPath) -> Result<Location<'_>, Error> {
        let best = self
            .mounts
            .iter()
            .enumerate()
            .filter(|(_, m)| path.starts_with(&m.point))
            .max_by_key(|(_, m)| m.point.depth());
        if let Some((index, mount)) = best {
            let inner = path
                .strip_prefix(&mount.point)
                .ok_or_else(|| Error::new(ErrorKind::Other, "mount prefix mismatch"))?;
            return Ok(Location::Mount {
                mount,
                index,
                inner,
            });
        }
        if self.mounts.iter().any(|m| m.point.starts_with(path)) {
            return Ok(Location::Virtual);
        }
        let names: Vec<String> = self.mounts.iter().map(|m| m.point.to_string()).collect();
        Err(Error::not_found(format!(
            "{path} is not inside any mount of this user (mounts: {})",
            names.join(", ")
        ))
        .with_path(path.to_string()))
    }

    /// The names that mounts add to directory `dir`: each mount point (or a
    /// directory leading to one) exactly one level below `dir`. Sorted, unique.
    pub fn mount_children(&self, dir: &VirtualPath) -> Vec<String> {
        let mut names: Vec<String> = self
            .mounts
            .iter()
            .filter_map(|m| m.point.strip_prefix(dir))
            .filter_map(|rest| rest.segments().next().map(str::to_owned))
            .collect();
        names.sort();
        names.dedup();
        names
    }
}

impl fmt::Display for UserView {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for m in &self.mounts {
            match &m.spec {
                ResolvedSpec::File { dir, .. } => writeln!(f, "{} -> File {dir}", m.point)?,
                ResolvedSpec::S3 { spec, root } => writeln!(
                    f,
                    "{} -> S3 s3://{}/{}",
                    m.point,
                    spec.bucket_name,
                    root.prefix()
                )?,
                ResolvedSpec::Memory { root } => {
                    writeln!(f, "{} -> Memory {}", m.point, root.prefix())?
                }
                ResolvedSpec::Custom { backend, root } => {
                    writeln!(f, "{} -> {backend} {}", m.point, root.prefix())?
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mappings(json: &str) -> Mappings {
        serde_json::from_str(json).unwrap()
    }

    fn vp(s: &str) -> VirtualPath {
        VirtualPath::parse(s).unwrap()
    }

    const SAMPLE: &str = r#"{
        "": { "": {"type":"S3","bucketName":"bkt","path":"users/%u"},
              "shared": {"type":"Memory","path":"shared"} },
        "alice": { "/shared": "/srv/alice-shared", "archive/old": {"type":"Memory","path":"old/%u"} },
        "carol": { "archive": "/srv/%u" }
    }"#;

    #[test]
    fn per_user_entries_replace_all_users_entries() {
        let m = mappings(SAMPLE);
        let view = m.resolve(&Identity::user("alice")).unwrap();
        let points: Vec<_> = view.mounts().iter().map(|m| m.point.to_string()).collect();
        assert_eq!(points, ["/", "/archive/old", "/shared"]);
        assert!(
            matches!(&view.mounts()[2].spec, ResolvedSpec::File { dir, .. } if dir == "/srv/alice-shared")
        );
        match &view.mounts()[0].spec {
            ResolvedSpec::S3 { root, .. } => assert_eq!(root.prefix(), "users/alice/"),
            other => panic!("{other:?}"),
        }

        let bob = m.resolve(&Identity::user("bob")).unwrap();
        assert_eq!(bob.mounts().len(), 2);
        assert!(
            matches!(&bob.mounts()[1].spec, ResolvedSpec::Memory { root } if root.prefix() == "shared/")
        );
    }

    #[test]
    fn unknown_user_without_all_users_entry_is_refused() {
        let m = mappings(r#"{"alice": {"": "/srv/alice"}}"#);
        let e = m.resolve(&Identity::user("mallory")).unwrap_err();
        assert_eq!(
            e,
            ResolveError::NoSandboxForUser {
                user: "mallory".into()
            }
        );
        assert!(e.to_string().contains("\"mallory\""));
        assert_eq!(Error::from(e).kind(), ErrorKind::PermissionDenied);
        assert!(m.resolve(&Identity::user("")).is_err());
    }

    #[test]
    fn longest_mount_wins_and_virtual_directories_list_mounts() {
        let m = mappings(SAMPLE);
        let view = m.resolve(&Identity::user("alice")).unwrap();
        match view.locate(&vp("/archive/old/x/y")).unwrap() {
            Location::Mount { mount, inner, .. } => {
                assert_eq!(mount.point.as_str(), "archive/old");
                assert_eq!(inner.as_str(), "x/y");
            }
            other => panic!("{other:?}"),
        }
        match view.locate(&vp("/archive/other")).unwrap() {
            Location::Mount { mount, inner, .. } => {
                assert!(mount.point.is_root());
                assert_eq!(inner.as_str(), "archive/other");
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(
            view.mount_children(&VirtualPath::ROOT),
            ["archive", "shared"]
        );
        assert_eq!(view.mount_children(&vp("archive")), ["old"]);
        let tricky = mappings(r#"{"": {"data": "/a", "data-old": "/b", "data/x": "/c"}}"#);
        let v = tricky.resolve(&Identity::user("u")).unwrap();
        assert_eq!(v.mount_children(&VirtualPath::ROOT), ["data", "data-old"]);

        let carol = m.resolve(&Identity::user("carol")).unwrap();
        assert!(carol.has_root_mount());
        let only_archive = mappings(r#"{"dave": {"archive": "/srv/dave"}}"#);
        let dave = only_archive.resolve(&Identity::user("dave")).unwrap();
        assert!(!dave.has_root_mount());
        assert_eq!(dave.locate(&VirtualPath::ROOT).unwrap(), Location::Virtual);
        assert_eq!(dave.mount_children(&VirtualPath::ROOT), ["archive"]);
        let e = dave.locate(&vp("/elsewhere")).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::NotFound);
        assert!(e.to_string().contains("/archive"), "{e}");
    }

    #[test]
    fn hostile_user_names_never_move_a_prefix() {
        let m = mappings(SAMPLE);
        for bad in ["..", "../bob", "a/b", ".", "x\\y", "nul\0"] {
            let e = m.resolve(&Identity::user(bad)).unwrap_err();
            assert!(
                matches!(e, ResolveError::Placeholder { .. }),
                "{bad:?}: {e}"
            );
        }
    }

    #[test]
    fn config_errors_carry_user_mount_and_key() {
        let e = serde_json::from_str::<Mappings>(
            r#"{"alice": {"/archive": {"type":"S3","bucketName":"bkt","proxyPort":99999,"proxyHost":"p"}}}"#,
        )
        .unwrap_err()
        .to_string();
        assert!(
            e.contains("mapping for user \"alice\", mount \"/archive\""),
            "{e}"
        );
        assert!(e.contains("`proxyPort`"), "{e}");

        let e = serde_json::from_str::<Mappings>(r#"{"": {"a": "/x", "/a/": "/y"}}"#)
            .unwrap_err()
            .to_string();
        assert!(e.contains("name the same mount point"), "{e}");

        let e = serde_json::from_str::<Mappings>(r#"{"": {"a": "/x"}, "": {"b": "/y"}}"#)
            .unwrap_err()
            .to_string();
        assert!(e.contains("key \"\" is written twice"), "{e}");
        let e = serde_json::from_str::<Mappings>(r#"{"u": {"a": "/x", "a": "/y"}}"#)
            .unwrap_err()
            .to_string();
        assert!(e.contains("key \"a\" is written twice"), "{e}");

        let e = serde_json::from_str::<Mappings>(r#"{"": {"..": "/x"}}"#)
            .unwrap_err()
            .to_string();
        assert!(e.contains("escapes the sandbox"), "{e}");

        let e = serde_json::from_str::<Mappings>(r#"{"": {"": 42}}"#)
            .unwrap_err()
            .to_string();
        assert!(e.contains("a directory path or an object"), "{e}");
    }

    #[test]
    fn insert_builds_mappings_in_code() {
        let mut m = Mappings::default();
        m.insert(
            "",
            "",
            SandboxSpec::Memory(crate::config::MemorySpec {
                path: crate::template::PathTemplate::parse("path", "%u").unwrap(),
            }),
        )
        .unwrap();
        let view = m.resolve(&Identity::user("zed")).unwrap();
        assert!(
            matches!(&view.mounts()[0].spec, ResolvedSpec::Memory { root } if root.prefix() == "zed/")
        );
    }
}
