//! Workspace tasks. `cargo xtask docs [--check]` (coming with the docs generator).
fn main() {}
