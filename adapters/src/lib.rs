//! Storage backends for corral.
