//! cargo xtask: setup, wasm, demo, test, bench.
fn main() {}
