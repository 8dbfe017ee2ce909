//! The domain's property tests and fuzzers, in one test binary (each
//! binary links its own copy of everything: on two cores, one is cheaper).

mod counted;
mod fuzz;
mod listing;
mod model;
