//! The conformance suite and the S3 settings against real servers, in one
//! test binary (each binary links the HTTP and TLS stack again: on two
//! cores, one is cheaper). The servers come from `corral-fixtures`.

mod backends;
mod checksums;
mod common;
mod compatibility;
mod s3_settings;
