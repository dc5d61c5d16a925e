//! Fails early, with the fix, when bpf-linker is missing, and rebuilds the
//! programs when bpf-linker changes.

fn main() {
    match which::which("bpf-linker") {
        Ok(path) => println!("cargo:rerun-if-changed={}", path.display()),
        Err(err) => {
            println!(
                "cargo:warning=bpf-linker not found ({err}); run `cargo xtask setup` to install it"
            );
        }
    }
}
