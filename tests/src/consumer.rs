//! The example consumer of the pinned containers map
//! (`examples/ebpf-consumer/execs_per_pod.bpf.c`), built as another tool's
//! author would build it, and a way to make exact execs in a cgroup.

use std::{path::Path, process::Command};

/// The example consumer, built with clang for BPF in `dir`.
pub fn build(dir: &Path) -> Vec<u8> {
    let root = crate::repo_root();
    let source = root.join("examples/ebpf-consumer/execs_per_pod.bpf.c");
    let object = dir.join("execs_per_pod.bpf.o");
    let multiarch = Command::new("cc")
        .arg("-print-multiarch")
        .output()
        .expect("cc -print-multiarch");
    let multiarch = String::from_utf8_lossy(&multiarch.stdout).trim().to_owned();
    let out = Command::new("clang")
        .args(["-O2", "-g", "-target", "bpf", "-Wall", "-Werror", "-I"])
        .arg(root.join("include"))
        .arg("-isystem")
        .arg(format!("/usr/include/{multiarch}"))
        .arg("-c")
        .arg(&source)
        .arg("-o")
        .arg(&object)
        .output()
        .unwrap_or_else(|e| {
            panic!("cannot run clang ({e}): run `cargo xtask setup --for-tests`, which installs it")
        });
    assert!(
        out.status.success(),
        "clang {}: {}",
        source.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    std::fs::read(&object).expect("the consumer's object")
}

/// Runs `/bin/true` `n` times, each moved into cgroup `procs` before
/// its exec: exactly `n` execs there.
pub fn exec_true(procs: Option<&Path>, n: usize) {
    for _ in 0..n {
        let mut cmd = Command::new("/bin/true");
        if let Some(procs) = procs {
            crate::join_cgroup_before_exec(&mut cmd, procs);
        }
        let status = cmd.status().expect("run /bin/true");
        assert!(status.success());
    }
}
