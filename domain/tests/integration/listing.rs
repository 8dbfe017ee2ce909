//! Property test: the streaming listing rule ([`DirectoryListing`], the one
//! every listing of corral goes through) against a reference model that
//! decides the same directory in one batch, over random keys, as an S3
//! delimited listing returns them (sorted, common prefixes folded), and
//! random mounts.

use std::collections::{BTreeMap, BTreeSet};

use corral_domain::key::KeyClass;
use corral_domain::listing::{DirectoryListing, EntryKind};
use corral_domain::port::{ListItem, ObjectMeta};
use corral_domain::{ObjectKey, SandboxRoot, VirtualPath};
use proptest::prelude::*;

/// What an S3 server answers to a delimited listing of `prefix`.
fn delimited(keys: &BTreeSet<String>, prefix: &str) -> Vec<ListItem> {
    let mut items: BTreeMap<String, ListItem> = BTreeMap::new();
    for k in keys.iter().filter(|k| k.starts_with(prefix)) {
        let rest = &k[prefix.len()..];
        match rest.find('/') {
            Some(i) => {
                let p = format!("{prefix}{}", &rest[..=i]);
                items.insert(p.clone(), ListItem::Prefix(ObjectKey::from_raw(p)));
            }
            None => {
                items.insert(
                    k.clone(),
                    ListItem::Object(ObjectMeta {
                        key: ObjectKey::from_raw(k.clone()),
                        size: k.len() as u64,
                        last_modified: None,
                        etag: None,
                        checksum: None,
                    }),
                );
            }
        }
    }
    items.into_values().collect()
}

/// The model: every visible name once; a directory wins over a file of its
/// name, and a mount over both.
fn model(root: &SandboxRoot, items: &[ListItem], mounts: &[String]) -> BTreeMap<String, EntryKind> {
    let mut out = BTreeMap::new();
    for i in items {
        let (name, kind) = match root.classify(i.key().as_str()) {
            KeyClass::File(p) if p.depth() == 1 => (p.as_str().to_owned(), EntryKind::File),
            KeyClass::Directory(p) if p.depth() == 1 => {
                (p.as_str().to_owned(), EntryKind::Directory)
            }
            _ => continue,
        };
        if kind == EntryKind::Directory || !out.contains_key(&name) {
            out.insert(name, kind);
        }
    }
    for m in mounts {
        out.insert(m.clone(), EntryKind::Directory);
    }
    out
}

fn key() -> impl Strategy<Value = String> {
    // Few letters, dots and slashes: names that collide as files and
    // directories, sort between `x` and `x/`, and hold `.`, `..` and `//`.
    "(u/|v/|u)[ab./]{0,6}"
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 20_000, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn the_streaming_rule_decides_what_the_model_does(
        keys in proptest::collection::btree_set(key(), 0..24),
        mounts in proptest::collection::btree_set("[ab]{1,2}", 0..3),
    ) {
        let root = SandboxRoot::new("u").unwrap();
        let mounts: Vec<String> = mounts.into_iter().collect();
        let items = delimited(&keys, root.prefix());
        let mut rule = DirectoryListing::new(root.clone(), VirtualPath::ROOT, mounts.clone());
        let mut shown = rule.mount_entries();
        for i in &items {
            shown.extend(rule.push(i));
        }
        shown.extend(rule.finish());
        // Mounts first.
        for (m, e) in mounts.iter().zip(&shown) {
            prop_assert_eq!(m, &e.name);
        }
        // Each name once, and the model's kind.
        let mut got = BTreeMap::new();
        for e in &shown {
            prop_assert!(got.insert(e.name.clone(), e.kind).is_none(), "{} shown twice: {:?}", e.name, shown);
        }
        prop_assert_eq!(got, model(&root, &items, &mounts));
    }
}
