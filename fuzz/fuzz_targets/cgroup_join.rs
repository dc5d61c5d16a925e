//! Joining a cgroup path the kernel printed in a private cgroup namespace
//! onto the namespace's host root (`pidmap::testing::cgroup::join_normalized`): the
//! printed path is made of cgroup names anyone with delegation chose.
#![no_main]

use libfuzzer_sys::fuzz_target;
use pidmap::testing::cgroup::join_normalized;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let (base, rel) = text.split_once('\n').unwrap_or(("/", &text));
    let Some(joined) = join_normalized(base, rel) else {
        return;
    };
    assert!(joined.starts_with('/'), "{joined:?}");
    assert!(joined == "/" || !joined.ends_with('/'), "{joined:?}");
    assert!(
        joined
            .split('/')
            .skip(1)
            .all(|c| !c.is_empty() && c != "." && c != "..")
            || joined == "/",
        "{joined:?} is not normalized"
    );
    // Idempotent: a normalized path joined onto the root is itself.
    assert_eq!(
        join_normalized("/", &joined).as_deref(),
        Some(joined.as_str())
    );
});
