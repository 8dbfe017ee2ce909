//! Fuzzing the parsers with proptest (cargo-fuzz needs a nightly toolchain,
//! which these machines cannot fetch): the mapping/config JSON, arbitrary and
//! mutated, must never panic, and whatever it accepts must keep every user in
//! their prefix; an ETag from a server is an MD5 only when it spells one.
//! Shrunk failures become unit tests in src/.
#![allow(clippy::unwrap_used)]

use corral_domain::mapping::ResolvedSpec;
use corral_domain::port::etag_md5;
use corral_domain::{Identity, Mappings, VirtualPath};
use proptest::prelude::*;

use crate::counted::{self, SKIPPED};

const CASES: u32 = 20_000;

/// Fragments a mapping file is made of, valid and not.
fn fragment() -> impl Strategy<Value = String> {
    prop_oneof![
        Just(r#""type":"S3""#.to_owned()),
        Just(r#""type":"Memory""#.to_owned()),
        Just(r#""type":"File""#.to_owned()),
        Just(r#""type":"Custom","backend":"x""#.to_owned()),
        Just(r#""bucketName":"bkt""#.to_owned()),
        Just(r#""path":"users/%u""#.to_owned()),
        Just(r#""path":"%d/%f/%%/%x""#.to_owned()),
        Just(r#""path":"a/../b""#.to_owned()),
        Just(r#""proxyPort":70000"#.to_owned()),
        Just(r#""proxyHost":"u:p@h""#.to_owned()),
        Just(r#""endpointOverride":"http://127.0.0.1:9""#.to_owned()),
        Just(r#""verifySSL":"maybe""#.to_owned()),
        Just(r#""secretKey":null"#.to_owned()),
        Just(r#""region":[1,2]"#.to_owned()),
        "\"[a-zA-Z%./\\\\ ]{0,12}\":\"[a-zA-Z%./\\\\ \u{1}]{0,12}\"",
        "[{}\\[\\]:,\"]{1,3}",
    ]
}

fn document() -> impl Strategy<Value = String> {
    (
        prop::collection::vec("[a-z%./]{0,6}", 1..3),
        prop::collection::vec("[a-z%./]{0,6}", 1..3),
        prop::collection::vec(fragment(), 0..6),
    )
        .prop_map(|(users, mounts, fields)| {
            let spec = format!("{{{}}}", fields.join(","));
            let mounts: Vec<String> = mounts.iter().map(|m| format!("{m:?}:{spec}")).collect();
            let users: Vec<String> = users
                .iter()
                .map(|u| format!("{u:?}:{{{}}}", mounts.join(",")))
                .collect();
            format!("{{{}}}", users.join(","))
        })
}

/// What a server may send as an ETag: any text, and near-MD5s (hex of 30
/// to 34 digits, quoted or not, some with a part count).
fn etag_text() -> impl Strategy<Value = String> {
    prop_oneof![
        "\\PC{0,40}",
        "\"?[0-9a-fA-F]{30,34}\"?",
        "\"?[0-9a-fA-F]{32}(-[0-9]{1,2})?\"?",
        "\"?[0-9a-fA-F]{31}[g-z ]\"?",
    ]
}

/// A mapping document that parses, and a user it maps (by name or as all
/// users): one spec of each type that checks a prefix, its path built of
/// placeholders, dots and slashes, under hostile user and mount names;
/// sometimes one fragment more (which may break it).
fn mapped_user() -> impl Strategy<Value = (String, String)> {
    let path = prop::sample::select(vec![
        "users/%u",
        "%u",
        "%d/%f/%u",
        "a/../%u",
        "./%u/.",
        "%u/..",
        "p%%/%u",
        "",
        "/%u/",
        "x//%u",
        "%f",
        "..",
        "a/%u/../../b",
    ]);
    let spec = prop_oneof![
        Just(r#""type":"S3","bucketName":"bkt""#.to_owned()),
        Just(r#""type":"Memory""#.to_owned()),
        Just(r#""type":"Custom","backend":"x""#.to_owned()),
    ];
    (
        user(),
        any::<bool>(),
        "[a-z%./]{0,6}",
        spec,
        path,
        prop::option::weighted(0.25, fragment()),
    )
        .prop_map(|(name, all, mount, spec, path, extra)| {
            let key = if all { "" } else { name.as_str() };
            let extra = extra.map(|f| format!(",{f}")).unwrap_or_default();
            let doc = format!("{{{key:?}:{{{mount:?}:{{{spec},\"path\":{path:?}{extra}}}}}}}");
            (doc, name)
        })
}

fn user() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("alice".to_owned()),
        Just("..".to_owned()),
        Just("a/b".to_owned()),
        "[a-z./\\\\%]{0,8}"
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: CASES, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn arbitrary_text_never_panics(text in "\\PC{0,200}") {
        let _ = serde_json::from_str::<Mappings>(&text);
    }
}

// These return early on most inputs (a document that does not parse or
// resolve, text that is no MD5): they count the cases reaching their
// assertions and assert a floor.

#[test]
fn accepted_mappings_keep_users_in_their_prefix() {
    counted::run(
        "accepted_mappings_keep_users_in_their_prefix",
        CASES,
        prop_oneof![(document(), user()), mapped_user()],
        // Measured about 2,300 (a document is mostly refused, or its user).
        &[("prefix checked", 1_500)],
        |(doc, name)| {
            let Ok(mappings) = serde_json::from_str::<Mappings>(&doc) else {
                return Ok("document refused");
            };
            let Ok(view) = mappings.resolve(
                &Identity::user(name.clone())
                    .with_domain("d")
                    .with_full_name("f"),
            ) else {
                return Ok("user refused");
            };
            let mut checked = SKIPPED;
            for mount in view.mounts() {
                let root = match &mount.spec {
                    ResolvedSpec::S3 { root, .. }
                    | ResolvedSpec::Memory { root }
                    | ResolvedSpec::Custom { root, .. } => root.clone(),
                    _ => continue,
                };
                // A user's prefix holds no `..` or `.` segment, whatever the name.
                prop_assert!(
                    root.prefix().split('/').all(|s| s != ".." && s != "."),
                    "prefix {:?}",
                    root.prefix()
                );
                let key = root.key_for(&VirtualPath::parse("x").unwrap()).unwrap();
                prop_assert!(key.as_str().starts_with(root.prefix()));
                checked = "prefix checked";
            }
            Ok(checked)
        },
    );
}

/// An ETag from a server is parsed as an MD5 only when it spells exactly one.
#[test]
fn etags_from_servers_never_panic_and_md5s_round_trip() {
    counted::run(
        "etags_from_servers_never_panic_and_md5s_round_trip",
        CASES,
        (
            etag_text(),
            prop::array::uniform16(any::<u8>()),
            any::<bool>(),
            any::<bool>(),
        ),
        // Measured about 1,800 and 18,200.
        &[("text parsed as an MD5", 1_000), ("text refused", 10_000)],
        |(text, md5, quoted, upper)| {
            let branch = if let Some(parsed) = etag_md5(&text) {
                let hex = text.trim_matches('"');
                prop_assert_eq!(hex.len(), 32);
                prop_assert!(hex.bytes().all(|b| b.is_ascii_hexdigit()));
                prop_assert_eq!(parsed[0], u8::from_str_radix(&hex[..2], 16).unwrap());
                "text parsed as an MD5"
            } else {
                "text refused"
            };
            let hex: String = md5
                .iter()
                .map(|b| {
                    if upper {
                        format!("{b:02X}")
                    } else {
                        format!("{b:02x}")
                    }
                })
                .collect();
            let etag = if quoted {
                format!("\"{hex}\"")
            } else {
                hex.clone()
            };
            prop_assert_eq!(etag_md5(&etag), Some(md5));
            prop_assert_eq!(etag_md5(&format!("\"{hex}-2\"")), None);
            Ok(branch)
        },
    );
}
