//! Bindings to Slurm's SPANK API, generated from the installed `slurm/spank.h` (libslurm-dev),
//! and a linker version script so the plugin exports only what Slurm looks up.

fn main() {
    println!("cargo:rerun-if-changed=wrapper.h");
    println!("cargo:rerun-if-changed=exports.map");
    let bindings = bindgen::Builder::default()
        .header("wrapper.h")
        .allowlist_function("spank_.*")
        .allowlist_function("slurm_(error|info|verbose|debug)")
        .allowlist_type("spank_.*")
        .allowlist_var("SLURM_VERSION_NUMBER")
        .allowlist_var("SPANK_.*")
        .generate()
        .expect("cannot generate SPANK bindings: install libslurm-dev and libclang-dev");
    let out = std::path::PathBuf::from(std::env::var("OUT_DIR").unwrap());
    bindings
        .write_to_file(out.join("spank.rs"))
        .expect("write bindings");
    let map =
        std::path::Path::new(&std::env::var("CARGO_MANIFEST_DIR").unwrap()).join("exports.map");
    println!(
        "cargo:rustc-cdylib-link-arg=-Wl,--version-script={}",
        map.display()
    );
}
