//! Fuzzing the size parser of the cache flags: never a panic, never a
//! saturated or absurd size accepted.
#![allow(clippy::unwrap_used)]

use corral::cache::parse_size;
use proptest::prelude::*;

proptest! {
    #![proptest_config(ProptestConfig { cases: 50_000, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn sizes(text in prop_oneof![
        "\\PC{0,24}",
        "[0-9]{1,25}(\\.[0-9]{0,3})? ?(B|KB|KiB|MB|MiB|GB|GiB|TB|TiB|PB|EB|k|m|g)?",
    ]) {
        if let Ok(n) = parse_size("--max-cloud-cache-size", &text) {
            prop_assert!(n <= 1 << 50, "{text:?} -> {n}");
        }
    }

    #[test]
    fn bytes_round_trip(n in 0u64..(1 << 50)) {
        prop_assert_eq!(parse_size("f", &n.to_string()).unwrap(), n);
    }
}
