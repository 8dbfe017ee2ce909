//! # corral-conformance
//!
//! corral's conformance suite as a library, in the manner of `object_store`'s
//! integration module: public async cases that any implementation of the
//! storage port ([`corral_domain::ObjectStorage`]) can be run against, from
//! anyone's tests or from `corral conformance` against a live endpoint.
//!
//! Every case reports [`Outcome::Pass`], [`Outcome::Fail`] (with the
//! server's answer) or [`Outcome::Unsupported`] (a declared capability is
//! absent, with the reason). Cases are selected by the target's declared
//! [`corral_domain::Capabilities`], so a quirky server is described by its
//! capabilities, not special-cased here. A run works under a random prefix
//! and removes what it created, even when a case fails.
//!
//! ```
//! use std::sync::Arc;
//! use corral_conformance::{Target, run};
//! # #[tokio::main(flavor = "current_thread")] async fn main() {
//! let store = Arc::new(object_store::memory::InMemory::new());
//! let target = Target::new("memory", Arc::new(corral_adapters::ObjectStoreBackend::memory(store)));
//! let report = run(&target).await;
//! assert!(report.failures().is_empty(), "{report}");
//! # }
//! ```

mod suite;

pub use suite::{
    Area, CaseReport, KnownFailure, Outcome, Report, Target, case_names, run, run_cases,
};
