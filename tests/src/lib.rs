//! corral's conformance suite.
