//! corral end to end, in one test binary (each binary links the HTTP and
//! TLS stack again: on two cores, one is cheaper): the sandbox service, the
//! transfer cache, the binary, confinement of File sandboxes, resume, faults,
//! integrity and hostile servers. The servers come from `corral-fixtures`.

mod cache;
mod cli;
mod common;
mod confinement;
mod faults;
mod fuzz_sizes;
mod hostile;
mod integrity;
mod leases;
mod listing;
mod resume;
mod rules;
mod sandbox;
mod sftp;
mod webdav;
