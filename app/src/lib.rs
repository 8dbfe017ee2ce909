//! corral: per-user sandboxes presented as a filesystem.
