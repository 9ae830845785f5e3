//! Finds the README and the guides whose examples run as doc tests.
//!
//! In the workspace the README is the repository's, two directories up; in the
//! crate as published, `cargo package` has copied it next to `Cargo.toml`
//! (the manifest's `readme`). Either way the doc tests read the same text, so
//! `cargo test --doc` works on a downloaded crate as well as in a checkout.
//!
//! The guides in the repository's `docs/` are not part of the package, so
//! their examples run in a checkout only: `baler_guides` is set when every
//! guide is there, and a downloaded crate builds without them.

use std::path::PathBuf;

/// The guides in `docs/` whose examples run as doc tests; `lib.rs` includes
/// each one by this name.
const GUIDES: [&str; 4] = ["cli.md", "loader.md", "processor.md", "shared-capacity.md"];

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
    println!("cargo:rustc-check-cfg=cfg(baler_guides)");
    if let Some(readme) = candidates.iter().find(|path| path.is_file()) {
        println!("cargo:rerun-if-changed={}", readme.display());
        println!("cargo:rustc-cfg=baler_readme");
        println!("cargo:rustc-env=BALER_README={}", readme.display());
    }
    let docs = manifest_dir.join("../../docs");
    let guides: Vec<PathBuf> = GUIDES.iter().map(|guide| docs.join(guide)).collect();
    if guides.iter().all(|guide| guide.is_file()) {
        for guide in &guides {
            println!("cargo:rerun-if-changed={}", guide.display());
        }
        println!("cargo:rustc-cfg=baler_guides");
        println!("cargo:rustc-env=BALER_GUIDES={}", docs.display());
    }
}
