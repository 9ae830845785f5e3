//! Finds the README whose examples run as doc tests.
//!
//! In the workspace the README is the repository's, two directories up; in the
//! crate as published, `cargo package` has copied it next to `Cargo.toml`
//! (the manifest's `readme`). Either way the doc tests read the same text, so
//! `cargo test --doc` works on a downloaded crate as well as in a checkout.

use std::path::PathBuf;

fn main() {
    let manifest_dir = PathBuf::from(std::env::var_os("CARGO_MANIFEST_DIR").unwrap_or_default());
    let candidates = [
        manifest_dir.join("README.md"),
        manifest_dir.join("../../README.md"),
    ];
    // Only existing paths: cargo reruns a build script on every build while a
    // path it watches is missing.
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rustc-check-cfg=cfg(baler_readme)");
    if let Some(readme) = candidates.iter().find(|path| path.is_file()) {
        println!("cargo:rerun-if-changed={}", readme.display());
        println!("cargo:rustc-cfg=baler_readme");
        println!("cargo:rustc-env=BALER_README={}", readme.display());
    }
}
