//! The listing the product shows is the domain's rule, fed by the backend:
//! `UserSandbox::list` (the product's code path) against
//! `DirectoryListing` fed the same backend's delimited listing directly,
//! over random trees with files and directories of one name, names that
//! sort between `x` and `x/`, and mounts shadowing names.

use std::sync::Arc;

use corral::cache::CacheConfig;
use corral::{Corral, Identity, Mappings, ObjectStorage};
use corral_adapters::ObjectStoreBackend;
use corral_domain::listing::DirectoryListing;
use corral_domain::port::{ListOptions, PutMode};
use corral_domain::{ErrorKind, ObjectKey, SandboxRoot, VirtualPath};
use futures::TryStreamExt;
use proptest::prelude::*;

use crate::common::counted;

fn key() -> impl Strategy<Value = String> {
    "[ab]{1,2}(\\.[ab])?(/[ab.]{1,2}){0,2}/?"
}

/// Lists `dir` through the product and through the rule fed directly;
/// returns whether the listing had entries.
async fn compare(keys: Vec<String>, dir: &str) -> Result<&'static str, TestCaseError> {
    let storage: Arc<dyn ObjectStorage> = Arc::new(ObjectStoreBackend::memory(Default::default()));
    for k in &keys {
        let r = storage
            .put(
                &ObjectKey::from_raw(format!("u/{k}")),
                "x".into(),
                PutMode::Overwrite,
            )
            .await;
        // The Memory store refuses a `.` or `..` segment, and only that:
        // such a key is stored nowhere, so neither listing holds it.
        let dots = k.split('/').any(|s| s == "." || s == "..");
        match r {
            Ok(_) => prop_assert!(!dots, "the store took {:?}", k),
            Err(e) => {
                prop_assert_eq!(e.kind(), ErrorKind::InvalidInput, "{}: {}", k, e);
                prop_assert!(dots, "{:?} refused: {}", k, e);
            }
        }
    }
    let mappings: Mappings = serde_json::from_str(
        r#"{"": {"": {"type": "Custom", "backend": "m", "path": "u"}, "/b/x": {"type": "Memory"}}}"#,
    )
    .expect("mappings");
    let corral = Corral::builder(mappings)
        .cache(CacheConfig::default())
        .backend("m", Arc::clone(&storage))
        .build()
        .expect("corral");
    let sb = corral.sandbox(&Identity::user("u")).expect("sandbox");
    let product: Vec<(String, bool)> = match sb.list(dir).try_collect::<Vec<_>>().await {
        Ok(entries) => entries
            .into_iter()
            .map(|e| (e.name.clone(), e.is_dir()))
            .collect(),
        Err(e) => return Err(TestCaseError::fail(format!("list {dir}: {e}"))),
    };
    // The rule, fed directly.
    let vp = VirtualPath::parse(dir).expect("path");
    let root = SandboxRoot::new("u").expect("root");
    let mounts = sb.view().mount_children(&vp);
    let mut rule = DirectoryListing::new(root.clone(), vp.clone(), mounts);
    let mut direct = rule.mount_entries();
    let prefix = root.list_prefix_for(&vp).expect("prefix");
    let items: Vec<_> = storage
        .list(
            &prefix,
            ListOptions {
                delimiter: true,
                start_after: None,
            },
        )
        .try_collect()
        .await
        .expect("list");
    for i in &items {
        direct.extend(rule.push(i));
    }
    direct.extend(rule.finish());
    let direct: Vec<(String, bool)> = direct
        .into_iter()
        .map(|e| (e.name.clone(), e.is_dir()))
        .collect();
    let entries = if product.is_empty() {
        "empty listing"
    } else {
        "entries compared"
    };
    prop_assert_eq!(product, direct, "keys {:?}", keys);
    Ok(entries)
}

#[test]
fn the_product_lists_through_the_domains_rule() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    counted::run(
        "the_product_lists_through_the_domains_rule",
        200,
        (
            proptest::collection::vec(key(), 0..16),
            prop_oneof![Just("/"), Just("/a"), Just("/b")],
        ),
        // Measured about 150 (the rest list an empty directory).
        &[("entries compared", 100)],
        |(keys, dir)| rt.block_on(compare(keys, dir)),
    );
}
