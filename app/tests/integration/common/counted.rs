//! Property tests that count the cases reaching their assertions: a
//! property that returns early on most inputs proves little unless enough
//! cases get through, so each branch's count is printed and has a floor.

use std::cell::RefCell;
use std::collections::BTreeMap;

use proptest::strategy::Strategy;
use proptest::test_runner::{Config, TestCaseError, TestRunner};

/// What a case returns when it did not reach the assertions.
pub(crate) const SKIPPED: &str = "returned early";

/// Runs `cases` cases of `strategy` through `test`, which returns the
/// branch of assertions it reached (or [`SKIPPED`]); prints the count of
/// each branch and asserts each floor of `floors` (branch, at least).
pub(crate) fn run<S: Strategy>(
    name: &str,
    cases: u32,
    strategy: S,
    floors: &[(&str, u32)],
    test: impl Fn(S::Value) -> Result<&'static str, TestCaseError>,
) {
    let counts: RefCell<BTreeMap<&'static str, u32>> = RefCell::default();
    let mut runner = TestRunner::new(Config {
        cases,
        failure_persistence: None,
        ..Config::default()
    });
    if let Err(e) = runner.run(&strategy, |v| {
        let branch = test(v)?;
        *counts.borrow_mut().entry(branch).or_default() += 1;
        Ok(())
    }) {
        panic!("{name}: {e}");
    }
    let counts = counts.into_inner();
    println!("{name}: {counts:?} of {cases} cases");
    for (branch, floor) in floors {
        let n = counts.get(branch).copied().unwrap_or(0);
        assert!(
            n >= *floor,
            "{name}: {n} of {cases} cases reached {branch:?}, fewer than {floor}"
        );
    }
}
