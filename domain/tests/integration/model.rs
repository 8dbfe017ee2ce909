//! Property test: the path → key → entry mapping against a small reference model,
//! over generated hostile inputs. 100,000 cases per property in the ordinary run.

#![allow(clippy::unwrap_used)] // A test: a panic is the failure report.

use corral_domain::key::KeyClass;
use corral_domain::path::{MAX_KEY_BYTES, MAX_SEGMENT_BYTES, PathError};
use corral_domain::template::PathTemplate;
use corral_domain::{Identity, SandboxRoot, VirtualPath};
use proptest::prelude::*;

use crate::counted::{self, SKIPPED};

const CASES: u32 = 100_000;

/// The reference model of path parsing, written as plainly as possible.
#[derive(Debug, PartialEq)]
enum Model {
    Ok(Vec<String>),
    Control,
    Escapes,
    SegmentTooLong,
    KeyTooLong,
}

fn model_parse(input: &str) -> Model {
    if input.chars().any(|c| (c as u32) < 0x20 || c as u32 == 0x7f) {
        return Model::Control;
    }
    let mut stack: Vec<String> = Vec::new();
    for seg in input.split('/') {
        if seg.is_empty() || seg == "." {
            continue;
        }
        if seg == ".." {
            if stack.pop().is_none() {
                return Model::Escapes;
            }
            continue;
        }
        if seg.len() > 255 {
            return Model::SegmentTooLong;
        }
        stack.push(seg.to_string());
    }
    if stack.join("/").len() > 1024 {
        return Model::KeyTooLong;
    }
    Model::Ok(stack)
}

fn segment() -> impl Strategy<Value = String> {
    prop_oneof![
        4 => "[a-c]{1,3}",
        2 => Just("..".to_string()),
        2 => Just(".".to_string()),
        2 => Just(String::new()),
        1 => Just("%2e%2e".to_string()),
        1 => Just("%2F".to_string()),
        1 => Just("...".to_string()),
        1 => Just("a b+c".to_string()),
        1 => Just("\u{65e5}\u{672c}\u{1F600}".to_string()),
        1 => Just("back\\slash".to_string()),
        1 => Just("caf\u{e9}\u{85}".to_string()),
        1 => prop::sample::select(vec!["\0", "\u{1}", "\n", "\t", "\u{1f}", "\u{7f}"]).prop_map(|c| format!("x{c}")),
        1 => (250usize..260).prop_map(|n| "z".repeat(n)),
        1 => (180usize..220).prop_map(|n| "w".repeat(n)),
    ]
}

fn path_input() -> impl Strategy<Value = String> {
    (
        any::<bool>(),
        prop::collection::vec(segment(), 0..9),
        any::<bool>(),
    )
        .prop_map(|(lead, segs, trail)| {
            let mut s = segs.join("/");
            if lead {
                s.insert(0, '/');
            }
            if trail {
                s.push('/');
            }
            s
        })
}

/// A path that parses but is long: with a long prefix, its key is too long.
fn long_path() -> impl Strategy<Value = String> {
    prop::collection::vec((180usize..=255).prop_map(|n| "q".repeat(n)), 4..=5)
        .prop_map(|segs| segs.join("/"))
        .prop_filter("at most 1,024 bytes", |p| p.len() <= 1024)
}

fn user_name() -> impl Strategy<Value = String> {
    prop_oneof![
        4 => "[a-z]{1,8}",
        1 => Just("..".to_string()),
        1 => Just(".".to_string()),
        1 => Just(String::new()),
        1 => Just("../bob".to_string()),
        1 => Just("a/b".to_string()),
        1 => Just("a\\b".to_string()),
        1 => Just("nul\0".to_string()),
        1 => Just("%2e%2e".to_string()),
        1 => Just("\u{540d}\u{524d}".to_string()),
        1 => (250usize..260).prop_map(|n| "u".repeat(n)),
    ]
}

fn root() -> impl Strategy<Value = SandboxRoot> {
    prop_oneof![
        Just(SandboxRoot::BUCKET_ROOT),
        "[a-c]{1,3}(/[a-c]{1,3}){0,2}/?".prop_map(|s| SandboxRoot::new(&s).unwrap()),
        (100usize..400).prop_map(|n| SandboxRoot::new(&"p".repeat(n.min(255))).unwrap()),
    ]
}

/// Raw keys a server might return, hostile ones included.
fn raw_key(root: &SandboxRoot) -> impl Strategy<Value = String> + use<> {
    let prefix = root.prefix().to_owned();
    let sibling = format!("{}x/", prefix.trim_end_matches('/'));
    (
        prop::sample::select(vec![
            prefix.clone(),
            prefix,
            sibling,
            String::new(),
            "other/".to_string(),
        ]),
        path_input(),
    )
        .prop_map(|(p, rest)| format!("{p}{}", rest.trim_start_matches('/')))
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: CASES,
        // Shrunk failures become unit tests in src/ instead.
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    #[test]
    fn parsing_matches_the_model(input in path_input()) {
        let got = VirtualPath::parse(&input);
        match (model_parse(&input), got) {
            (Model::Ok(segs), Ok(p)) => {
                prop_assert_eq!(p.as_str(), segs.join("/"));
                prop_assert_eq!(p.depth(), segs.len());
            }
            (Model::Control, Err(PathError::ControlCharacter { .. }))
            | (Model::Escapes, Err(PathError::EscapesSandbox { .. }))
            | (Model::SegmentTooLong, Err(PathError::SegmentTooLong { .. }))
            | (Model::KeyTooLong, Err(PathError::KeyTooLong { .. })) => {}
            (m, g) => prop_assert!(false, "input {:?}: model {:?}, got {:?}", input, m, g),
        }
    }
}

// The properties below return early on some inputs (a path that does not
// parse, a name that does not expand): they count the cases that reach
// their assertions, by branch, and assert a floor for each.

#[test]
fn keys_stay_in_the_prefix_and_map_back() {
    counted::run(
        "keys_stay_in_the_prefix_and_map_back",
        CASES,
        (root(), prop_oneof![9 => path_input(), 1 => long_path()]),
        // Measured about 53,000 and 2,800.
        &[("mapped", 40_000), ("too long", 1_500)],
        |(root, input)| {
            let Ok(path) = VirtualPath::parse(&input) else {
                return Ok(SKIPPED);
            };
            if path.is_root() {
                return Ok(SKIPPED);
            }
            match root.key_for(&path) {
                Ok(key) => {
                    prop_assert!(key.as_str().starts_with(root.prefix()));
                    prop_assert!(key.as_str().len() <= MAX_KEY_BYTES);
                    prop_assert_eq!(root.entry_for(key.as_str()), Some(path.clone()));
                    prop_assert_eq!(root.classify(key.as_str()), KeyClass::File(path.clone()));
                    let marker = root.dir_marker_for(&path).map(Option::unwrap);
                    if let Ok(marker) = marker {
                        prop_assert_eq!(
                            root.classify(marker.as_str()),
                            KeyClass::Directory(path.clone())
                        );
                    }
                    Ok("mapped")
                }
                Err(PathError::KeyTooLong { len, .. }) => {
                    prop_assert_eq!(len, root.prefix().len() + path.as_str().len());
                    prop_assert!(len > MAX_KEY_BYTES);
                    Ok("too long")
                }
                Err(e) => Err(TestCaseError::fail(format!("unexpected {e}"))),
            }
        },
    );
}

#[test]
fn a_listing_never_yields_an_entry_outside_the_sandbox() {
    counted::run(
        "a_listing_never_yields_an_entry_outside_the_sandbox",
        CASES,
        root().prop_flat_map(|r| (Just(r.clone()), raw_key(&r))),
        &[
            ("shown", 0),
            ("hidden in the prefix", 0),
            ("outside, hidden", 0),
        ],
        |(root, key)| {
            if let Some(entry) = root.entry_for(&key) {
                // Whatever is shown maps back to exactly the key it came from.
                let back = if key.ends_with('/') {
                    root.dir_marker_for(&entry).unwrap().unwrap()
                } else {
                    root.key_for(&entry).unwrap()
                };
                prop_assert_eq!(back.as_str(), key.as_str());
                prop_assert!(key.starts_with(root.prefix()));
                prop_assert!(entry.segments().all(|s| s != ".."
                    && s != "."
                    && !s.is_empty()
                    && s.len() <= MAX_SEGMENT_BYTES));
                Ok("shown")
            } else if key.starts_with(root.prefix()) && key != root.prefix() {
                // Hidden keys inside the prefix are exactly those the model cannot represent.
                let rest = &key[root.prefix().len()..];
                let body = rest.strip_suffix('/').unwrap_or(rest);
                let representable = key.len() <= MAX_KEY_BYTES
                    && body
                        .split('/')
                        .all(|s| !s.is_empty() && s != "." && s != ".." && s.len() <= 255)
                    && !body.chars().any(|c| (c as u32) < 0x20 || c as u32 == 0x7f);
                prop_assert!(!representable, "hid a representable key {:?}", key);
                Ok("hidden in the prefix")
            } else if key.starts_with(root.prefix()) {
                Ok(SKIPPED)
            } else {
                Ok("outside, hidden")
            }
        },
    );
}

#[test]
fn user_names_never_move_a_prefix() {
    counted::run(
        "user_names_never_move_a_prefix",
        CASES,
        (user_name(), path_input()),
        // Measured about 23,000 and 24,000.
        &[("prefix", 15_000), ("prefix and key", 15_000)],
        |(user, input)| {
            let tpl = PathTemplate::parse("path", "users/%u/home").unwrap();
            let Ok(expanded) = tpl.expand(&Identity::user(user.clone())) else {
                return Ok(SKIPPED);
            };
            let root = SandboxRoot::new(&expanded).unwrap();
            // Exactly three segments, the middle one the user name verbatim.
            prop_assert_eq!(root.prefix(), format!("users/{user}/home/"));
            prop_assert_eq!(root.prefix().matches('/').count(), 3);
            if let Ok(path) = VirtualPath::parse(&input)
                && let Ok(key) = root.key_for(&path)
            {
                prop_assert!(key.as_str().starts_with(root.prefix()));
                return Ok("prefix and key");
            }
            Ok("prefix")
        },
    );
}
