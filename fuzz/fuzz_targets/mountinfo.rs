//! The mount table (`/proc/self/mountinfo`) parser and its octal unescaping
//! (`pidmap::testing::cgroup::CgroupFs::from_mountinfo`), then joining a cgroup
//! path under what it found (`CgroupFs::dir_of`). Mount points and roots
//! carry names whoever mounts file systems chose.
#![no_main]

use std::path::{Component, PathBuf};

use libfuzzer_sys::fuzz_target;
use pidmap::testing::cgroup::{CgroupFs, Hierarchy};

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    // The last line is also a cgroup path to place.
    let path = text.lines().last().unwrap_or("/");
    let fs = CgroupFs::from_mountinfo(&text);
    for hierarchy in [Hierarchy::V2, Hierarchy::V1Memory] {
        let Some(root) = fs.root(hierarchy) else {
            continue;
        };
        let root = root.to_path_buf();
        let mut dir = PathBuf::new();
        if fs.dir_of(hierarchy, path, &mut dir).is_ok() {
            assert!(
                dir.starts_with(&root),
                "{} outside {}",
                dir.display(),
                root.display()
            );
            let below = dir.strip_prefix(&root).expect("under the root");
            assert!(
                below
                    .components()
                    .all(|c| matches!(c, Component::Normal(_))),
                "{} climbs",
                dir.display()
            );
        }
    }
});
