//! `pidmap::testing::cgroup::parse_proc_cgroup`: the text of `/proc/PID/cgroup`
//! (cgroup names are chosen by whoever creates them).
#![no_main]

use libfuzzer_sys::fuzz_target;
use pidmap::testing::cgroup::parse_proc_cgroup;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let paths = parse_proc_cgroup(text);
    // Only absolute paths are taken.
    for path in [&paths.v2, &paths.v1_memory].into_iter().flatten() {
        assert!(path.starts_with('/'), "{text:?} gave {path:?}");
    }
});
