//! Embeds `models/default.onnx` when it exists at build time; otherwise generates a fallback
//! that makes `embedded_default()` return a clear "no embedded model" error.

use std::path::PathBuf;

fn main() -> anyhow::Result<()> {
    let manifest = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR")?);
    let out = PathBuf::from(std::env::var("OUT_DIR")?);
    let models = manifest.join("../models");
    let model = models.join("default.onnx");
    // The directory's mtime changes when default.onnx appears or is replaced by rename. (A
    // rerun-if-changed on a missing path would rerun the script, and rebuild the crate, on
    // every build.)
    println!("cargo:rerun-if-changed=build.rs");
    if models.is_dir() {
        println!("cargo:rerun-if-changed={}", models.display());
    }
    if model.is_file() {
        println!("cargo:rerun-if-changed={}", model.display());
    }
    let code = if model.is_file() {
        let copy = out.join("default.onnx");
        std::fs::copy(&model, &copy)?;
        format!(
            "Some(include_bytes!({:?}) as &[u8])",
            copy.display().to_string()
        )
    } else {
        "None".to_string()
    };
    std::fs::write(out.join("embedded_model.rs"), code)?;
    Ok(())
}
