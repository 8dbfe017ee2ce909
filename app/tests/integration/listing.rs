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
use corral_domain::{ObjectKey, SandboxRoot, VirtualPath};
use futures::TryStreamExt;
use proptest::prelude::*;

fn key() -> impl Strategy<Value = String> {
    "[ab]{1,2}(\\.[ab])?(/[ab.]{1,2}){0,2}/?"
}

async fn compare(keys: Vec<String>, dir: &str) -> Result<(), TestCaseError> {
    let storage: Arc<dyn ObjectStorage> = Arc::new(ObjectStoreBackend::memory(Default::default()));
    for k in &keys {
        let _ = storage
            .put(
                &ObjectKey::from_raw(format!("u/{k}")),
                "x".into(),
                PutMode::Overwrite,
            )
            .await;
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
    prop_assert_eq!(product, direct, "keys {:?}", keys);
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 200, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn the_product_lists_through_the_domains_rule(
        keys in proptest::collection::vec(key(), 0..16),
        dir in prop_oneof![Just("/"), Just("/a"), Just("/b")],
    ) {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
        rt.block_on(compare(keys, dir))?;
    }
}
