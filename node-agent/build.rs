//! Builds the eBPF programs (`ebpf/programs`) for `bpfel-unknown-none` with
//! aya-build and leaves the object in OUT_DIR for `include_bytes_aligned!`.

use std::path::Path;

use anyhow::{Context as _, Result};

fn main() -> Result<()> {
    // aya-build passes `-Z build-std=core` only when RUSTC_BOOTSTRAP is set;
    // the machine has one stable toolchain, so set it for the eBPF build
    // alone (this process and its children), not for the whole workspace.
    #[expect(
        unsafe_code,
        reason = "set_var is unsafe in edition 2024; the build script is single-threaded here"
    )]
    // SAFETY: no other thread exists yet in this build script.
    unsafe {
        std::env::set_var("RUSTC_BOOTSTRAP", "1");
    }
    let manifest_dir = std::env::var("CARGO_MANIFEST_DIR").context("CARGO_MANIFEST_DIR not set")?;
    let programs = Path::new(&manifest_dir).join("../ebpf/programs");
    let programs = programs
        .canonicalize()
        .with_context(|| format!("eBPF programs not found at {}", programs.display()))?;
    let root_dir = programs
        .to_str()
        .context("eBPF programs path is not UTF-8")?;
    aya_build::build_ebpf(
        [aya_build::Package {
            name: "shoal-ebpf",
            root_dir,
            ..Default::default()
        }],
        aya_build::Toolchain::Custom("stable"),
    )
    .context(
        "building the eBPF programs failed; `cargo xtask setup` installs bpf-linker and rust-src",
    )
}
