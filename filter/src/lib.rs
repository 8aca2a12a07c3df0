//! proxy-wasm HTTP filter: records per-upstream request windows, reports them, applies hints.
