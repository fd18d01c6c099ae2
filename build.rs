//! Link settings of the `ecdysis` binary.

use std::env;
use std::path::Path;

/// The functions a running server uses, in the order the linker places them (written by
/// `link/profile.sh`).
const HOT_FUNCTIONS: &str = "link/hot-functions.txt";

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-changed={HOT_FUNCTIONS}");
    println!("cargo:rerun-if-env-changed=ECDYSIS_KEEP_SYMBOLS");
    let target = env::var("TARGET").unwrap_or_default();
    let release = env::var("PROFILE").is_ok_and(|p| p == "release");
    if !target.ends_with("-linux-gnu") {
        return;
    }
    // Relative relocations packed (DT_RELR, glibc 2.36+ and binutils 2.38+): the 3 MB table of
    // relocations the loader reads at every start shrinks to 40 KB, so the binary is about
    // 3 MB smaller and idle memory about 4 MB lower, with address randomisation kept (which
    // linking without PIE would give up: the process decodes untrusted images in C).
    println!("cargo:rustc-link-arg-bins=-Wl,-z,pack-relative-relocs");
    if !release {
        return;
    }
    // Symbols are stripped here rather than by the profile's `strip`: the profile is part of
    // every crate's hash, which is part of every function's name, so a build that keeps its
    // symbols (ECDYSIS_KEEP_SYMBOLS=1, for link/profile.sh or a profiler) names its functions
    // exactly as the release binary does, and takes a relink rather than a rebuild.
    if env::var_os("ECDYSIS_KEEP_SYMBOLS").is_none() {
        println!("cargo:rustc-link-arg-bins=-Wl,--strip-all");
    }
    // The functions a running server uses (recorded by link/profile.sh) go side by side at
    // the front of the code, so a server maps in those pages instead of pages all over it.
    // Only with LLD (the default linker of this target since Rust 1.90): GNU ld has no such
    // option. Names it does not find (after a dependency or toolchain update) are skipped.
    let manifest = env::var("CARGO_MANIFEST_DIR").unwrap_or_default();
    let hot = Path::new(&manifest).join(HOT_FUNCTIONS);
    let own_linker = env::var_os("RUSTC_LINKER").is_some()
        || env::var("CARGO_ENCODED_RUSTFLAGS").is_ok_and(|f| f.contains("linker"));
    if target == "x86_64-unknown-linux-gnu" && !own_linker && hot.exists() {
        println!(
            "cargo:rustc-link-arg-bins=-Wl,--symbol-ordering-file={}",
            hot.display()
        );
        println!("cargo:rustc-link-arg-bins=-Wl,--no-warn-symbol-ordering");
    }
}
