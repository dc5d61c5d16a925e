//! `pidmap::testing::cgroup::container_from_path`: any cgroup path a process can be
//! put in (a container runtime of any kind names them).
#![no_main]

use libfuzzer_sys::fuzz_target;
use pidmap::testing::cgroup::container_from_path;

fuzz_target!(|data: &[u8]| {
    let Ok(path) = std::str::from_utf8(data) else {
        return;
    };
    if let Some(c) = container_from_path(path) {
        // What the parser promises: a 64-digit lowercase hex id, taken from
        // the path itself.
        assert_eq!(c.container_id.len(), 64, "{path:?}");
        assert!(
            c.container_id
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)),
            "{path:?}"
        );
        assert!(path.contains(&c.container_id), "{path:?}");
        // The bare `/<namespace>/<id>` layout only at the top of the path
        // (empty components, as in `//a` or a path without its leading
        // `/`, do not count).
        if let Some(ns) = &c.namespace {
            let top = path.split('/').find(|c| !c.is_empty());
            assert_eq!(top, Some(ns.as_str()), "{path:?}");
        }
    }
});
