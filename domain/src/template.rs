//! Path templates with the placeholders `%u`, `%d`, `%f` and `%%`.
//!
//! A template is parsed once, when the config is loaded, so an unknown
//! placeholder is a config error rather than a surprise at login. Expansion
//! validates each value it inserts: a user name is a single path segment and
//! must never move a prefix (`..`, `a/b`, `\`, control characters and the
//! empty name are refused).

use std::fmt;

use crate::error::ConfigError;

/// Who a sandbox is resolved for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    /// The user name (`%u`).
    pub user: String,
    /// The domain (`%d`), if any.
    pub domain: Option<String>,
    /// The full user name (`%f`), if any.
    pub full_name: Option<String>,
}

impl Identity {
    /// An identity with only a user name.
    pub fn user(name: impl Into<String>) -> Self {
        Self {
            user: name.into(),
            domain: None,
            full_name: None,
        }
    }

    /// Sets the domain.
    #[must_use]
    pub fn with_domain(mut self, domain: impl Into<String>) -> Self {
        self.domain = Some(domain.into());
        self
    }

    /// Sets the full user name.
    #[must_use]
    pub fn with_full_name(mut self, full_name: impl Into<String>) -> Self {
        self.full_name = Some(full_name.into());
        self
    }
}

/// Why a value could not be inserted into a path.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PlaceholderError {
    /// The value is not a safe single segment.
    #[error("{what} {value:?} cannot be used in a sandbox path ({placeholder}): {reason}")]
    UnsafeValue {
        /// `user name`, `domain` or `full user name`.
        what: &'static str,
        /// `%u`, `%d` or `%f`.
        placeholder: &'static str,
        /// The value, escaped.
        value: String,
        /// Why it is refused.
        reason: &'static str,
    },
    /// The template needs a value that was not given.
    #[error("the sandbox path uses {placeholder} but no {what} was given")]
    Missing {
        /// `domain` or `full user name`.
        what: &'static str,
        /// `%d` or `%f`.
        placeholder: &'static str,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Placeholder {
    User,
    Domain,
    FullName,
}

impl Placeholder {
    fn code(self) -> &'static str {
        match self {
            Self::User => "%u",
            Self::Domain => "%d",
            Self::FullName => "%f",
        }
    }
    fn what(self) -> &'static str {
        match self {
            Self::User => "user name",
            Self::Domain => "domain",
            Self::FullName => "full user name",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Piece {
    Literal(String),
    Value(Placeholder),
}

/// A parsed `path` option.
#[derive(Clone, PartialEq, Eq, Default)]
pub struct PathTemplate {
    source: String,
    pieces: Vec<Piece>,
}

impl PathTemplate {
    /// Parses `source`; `key` names the option in errors.
    pub fn parse(key: &str, source: &str) -> Result<Self, ConfigError> {
        let mut pieces = Vec::new();
        let mut literal = String::new();
        let mut chars = source.chars();
        while let Some(c) = chars.next() {
            if c != '%' {
                literal.push(c);
                continue;
            }
            let placeholder = match chars.next() {
                Some('%') => {
                    literal.push('%');
                    continue;
                }
                Some('u') => Placeholder::User,
                Some('d') => Placeholder::Domain,
                Some('f') => Placeholder::FullName,
                other => {
                    let shown = other
                        .map(|c| format!("%{c}"))
                        .unwrap_or_else(|| "%".to_owned());
                    return Err(ConfigError::key(
                        key,
                        format!(
                            "unknown placeholder `{shown}` in {source:?}; use %u (user), %d (domain), %f (full user name) or %% for a literal %"
                        ),
                    ));
                }
            };
            if !literal.is_empty() {
                pieces.push(Piece::Literal(std::mem::take(&mut literal)));
            }
            pieces.push(Piece::Value(placeholder));
        }
        if !literal.is_empty() {
            pieces.push(Piece::Literal(literal));
        }
        Ok(Self {
            source: source.to_owned(),
            pieces,
        })
    }

    /// The template as written.
    pub fn as_str(&self) -> &str {
        &self.source
    }

    /// Whether the template is empty (the bucket or store root).
    pub fn is_empty(&self) -> bool {
        self.pieces.is_empty()
    }

    /// Whether the template holds a placeholder.
    pub fn has_placeholders(&self) -> bool {
        self.pieces.iter().any(|p| matches!(p, Piece::Value(_)))
    }

    /// The directory the template fixes, before the first segment that
    /// holds a placeholder (`/srv/home` for `/srv/home/%u/files`); `None`
    /// without a placeholder. What lies below it is the user's.
    pub fn literal_base(&self) -> Option<String> {
        let first = self
            .pieces
            .iter()
            .position(|p| matches!(p, Piece::Value(_)))?;
        let literal: String = self.pieces[..first]
            .iter()
            .map(|p| match p {
                Piece::Literal(s) => s.as_str(),
                Piece::Value(_) => "",
            })
            .collect();
        Some(match literal.rfind('/') {
            Some(0) => "/".to_owned(),
            Some(i) => literal[..i].to_owned(),
            None => String::new(),
        })
    }

    /// Expands the placeholders for `identity`, validating each value used.
    pub fn expand(&self, identity: &Identity) -> Result<String, PlaceholderError> {
        let mut out = String::with_capacity(self.source.len() + 16);
        for piece in &self.pieces {
            match piece {
                Piece::Literal(s) => out.push_str(s),
                Piece::Value(p) => {
                    let value = match p {
                        Placeholder::User => Some(identity.user.as_str()),
                        Placeholder::Domain => identity.domain.as_deref(),
                        Placeholder::FullName => identity.full_name.as_deref(),
                    }
                    .ok_or(PlaceholderError::Missing {
                        what: p.what(),
                        placeholder: p.code(),
                    })?;
                    check_value(*p, value)?;
                    out.push_str(value);
                }
            }
        }
        Ok(out)
    }
}

fn check_value(p: Placeholder, value: &str) -> Result<(), PlaceholderError> {
    let reason = if value.is_empty() {
        Some("it is empty")
    } else if value == "." || value == ".." {
        Some("`.` and `..` are not names")
    } else if value.contains('/') {
        Some("it contains `/`")
    } else if value.contains('\\') {
        Some("it contains `\\`")
    } else if value.chars().any(|c| c.is_ascii_control()) {
        Some("it contains a control character")
    } else if value.len() > crate::path::MAX_SEGMENT_BYTES {
        Some("it is longer than 255 bytes")
    } else {
        None
    };
    match reason {
        None => Ok(()),
        Some(reason) => Err(PlaceholderError::UnsafeValue {
            what: p.what(),
            placeholder: p.code(),
            value: crate::path::truncate_chars(&value.escape_debug().to_string(), 64),
            reason,
        }),
    }
}

impl fmt::Debug for PathTemplate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", self.source)
    }
}

impl fmt::Display for PathTemplate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.source)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_literal_base_is_the_directory_before_the_first_placeholder() {
        let base = |s: &str| PathTemplate::parse("path", s).unwrap().literal_base();
        assert_eq!(base("/srv/home/%u"), Some("/srv/home".to_owned()));
        assert_eq!(base("/srv/home/%u/files"), Some("/srv/home".to_owned()));
        assert_eq!(base("/srv/home/u-%u"), Some("/srv/home".to_owned()));
        assert_eq!(base("/srv/%d/users/%u"), Some("/srv".to_owned()));
        assert_eq!(base("/%u"), Some("/".to_owned()));
        assert_eq!(base("%u"), Some(String::new()));
        assert_eq!(base("/srv/100%%/x"), None);
    }

    fn t(s: &str) -> PathTemplate {
        PathTemplate::parse("path", s).unwrap()
    }

    #[test]
    fn expands_all_placeholders() {
        let id = Identity::user("alice")
            .with_domain("corp")
            .with_full_name("alice@corp");
        assert_eq!(
            t("/u/%d/%u/%f/100%%").expand(&id).unwrap(),
            "/u/corp/alice/alice@corp/100%"
        );
        assert_eq!(t("plain").expand(&id).unwrap(), "plain");
        assert!(t("%u").has_placeholders());
        assert!(!t("a%%b").has_placeholders());
    }

    #[test]
    fn unknown_placeholders_fail_at_parse() {
        for bad in ["%x", "a/%", "%U", "%1"] {
            let e = PathTemplate::parse("path", bad).unwrap_err();
            assert_eq!(e.key.as_deref(), Some("path"));
            assert!(e.message.contains("unknown placeholder"), "{e}");
        }
    }

    #[test]
    fn hostile_values_are_refused() {
        let tpl = t("users/%u");
        for bad in [
            "",
            ".",
            "..",
            "a/b",
            "../../etc",
            "a\\b",
            "a\0",
            "a\nb",
            &"x".repeat(256),
        ] {
            let e = tpl.expand(&Identity::user(bad)).unwrap_err();
            assert!(
                matches!(e, PlaceholderError::UnsafeValue { .. }),
                "{bad:?}: {e}"
            );
        }
        // Values that only look odd are fine.
        for ok in ["...", "a.b", "%2e%2e", "名前", "a b", "x@y"] {
            assert_eq!(
                tpl.expand(&Identity::user(ok)).unwrap(),
                format!("users/{ok}")
            );
        }
    }

    #[test]
    fn missing_values_are_named() {
        let e = t("%d/%u").expand(&Identity::user("bob")).unwrap_err();
        assert_eq!(
            e.to_string(),
            "the sandbox path uses %d but no domain was given"
        );
        // An unused bad value is not an error: only values inserted are checked.
        assert!(t("fixed").expand(&Identity::user("..")).is_ok());
    }
}
