//! Fuzzing the size parser of the cache flags: never a panic, never a
//! saturated or absurd size accepted.
#![allow(clippy::unwrap_used)]

use corral::cache::parse_size;
use proptest::prelude::*;

use crate::common::counted;

/// Most text is refused: the accepted sizes are counted, and floored.
#[test]
fn sizes() {
    counted::run(
        "sizes",
        50_000,
        prop_oneof![
            "\\PC{0,24}",
            "[0-9]{1,25}(\\.[0-9]{0,3})? ?(B|KB|KiB|MB|MiB|GB|GiB|TB|TiB|PB|EB|k|m|g)?",
        ],
        // Measured about 7,500 and 42,500.
        &[("accepted", 5_000), ("refused", 30_000)],
        |text| match parse_size("--max-cloud-cache-size", &text) {
            Ok(n) => {
                prop_assert!(n <= 1 << 50, "{text:?} -> {n}");
                Ok("accepted")
            }
            Err(_) => Ok("refused"),
        },
    );
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 50_000, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn bytes_round_trip(n in 0u64..(1 << 50)) {
        prop_assert_eq!(parse_size("f", &n.to_string()).unwrap(), n);
    }
}
