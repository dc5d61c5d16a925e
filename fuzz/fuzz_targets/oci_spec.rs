//! The containerd OCI spec parser (`parse_spec`) and the cgroupsPath parser
//! (`cgroup_dir`) of `pidmap::testing::runtime::containerd::spec`: a spec is written
//! by whoever creates the container.
#![no_main]

use libfuzzer_sys::fuzz_target;
use pidmap::testing::runtime::containerd::spec::{cgroup_dir, parse_spec};

fuzz_target!(|data: &[u8]| {
    let info = parse_spec(data);
    // The input as a cgroupsPath too, so its parser is explored directly.
    let raw = std::str::from_utf8(data).ok();
    for path in info.cgroups_path.as_deref().into_iter().chain(raw) {
        if let Some(dir) = cgroup_dir(path) {
            assert!(dir.starts_with('/'), "{path:?} gave {dir:?}");
        }
    }
});
