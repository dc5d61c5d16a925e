//! `include/pidmap.h` and [`agent_common::ContainerRecord`] describe the
//! same bytes: a C program built against the header fills a record field
//! by field and prints its bytes, its size and every field's offset; the
//! Rust record filled with the same values must be those bytes.

use std::{path::Path, process::Command};

use agent_common::containers::*;

/// The C side: a record with every field set, by name, and the layout.
const PROGRAM: &str = r#"
#include <stddef.h>
#include <stdio.h>
#include <string.h>
#include "pidmap.h"

int main(void) {
    struct pidmap_container_record r;
    memset(&r, 0, sizeof r);
    r.version = PIDMAP_RECORD_VERSION;
    r.state = PIDMAP_STATE_CONTAINER;
    r.runtime = PIDMAP_RUNTIME_CRIO;
    r.flags = PIDMAP_FLAG_CONTAINER_ID | PIDMAP_FLAG_POD_UID | PIDMAP_FLAG_SANDBOX
        | PIDMAP_FLAG_NESTED | PIDMAP_FLAG_V1_MEMORY | PIDMAP_FLAG_ID_NOT_HEX;
    r.generation = 0x0102030405060708ULL;
    for (int i = 0; i < 32; i++) r.container_id[i] = (__u8)(0xa0 + i);
    for (int i = 0; i < 16; i++) r.pod_uid[i] = (__u8)(0x10 + i);
    const unsigned char *b = (const unsigned char *)&r;
    for (size_t i = 0; i < sizeof r; i++) printf("%02x", b[i]);
    printf("\n%zu %zu %zu %zu %zu %zu %zu %zu\n", sizeof r,
           offsetof(struct pidmap_container_record, version),
           offsetof(struct pidmap_container_record, state),
           offsetof(struct pidmap_container_record, runtime),
           offsetof(struct pidmap_container_record, flags),
           offsetof(struct pidmap_container_record, generation),
           offsetof(struct pidmap_container_record, container_id),
           offsetof(struct pidmap_container_record, pod_uid));
    printf("%s %d %d %d %d %d %d %d %d %d %d %d %d %d %d %d %d\n", PIDMAP_CONTAINERS_PIN,
           PIDMAP_CONTAINERS_MAX_ENTRIES, PIDMAP_STATE_HOST, PIDMAP_STATE_PENDING,
           PIDMAP_STATE_CONTAINER, PIDMAP_RUNTIME_UNKNOWN, PIDMAP_RUNTIME_CONTAINERD,
           PIDMAP_RUNTIME_DOCKER, PIDMAP_RUNTIME_CRIO, PIDMAP_RUNTIME_PODMAN,
           PIDMAP_FLAG_CONTAINER_ID, PIDMAP_FLAG_ID_NOT_HEX, PIDMAP_FLAG_POD_UID,
           PIDMAP_FLAG_SANDBOX, PIDMAP_FLAG_NESTED, PIDMAP_FLAG_V1_MEMORY,
           PIDMAP_RECORD_VERSION);
    return 0;
}
"#;

fn c_output() -> String {
    let include = Path::new(env!("CARGO_MANIFEST_DIR")).join("../include");
    let dir = std::env::temp_dir().join(format!("pidmap-c-header-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let source = dir.join("record.c");
    let binary = dir.join("record");
    std::fs::write(&source, PROGRAM).unwrap();
    let cc = std::env::var("CC").unwrap_or_else(|_| "cc".to_owned());
    let built = Command::new(&cc)
        .args(["-std=c11", "-Wall", "-Werror", "-o"])
        .arg(&binary)
        .arg("-I")
        .arg(&include)
        .arg(&source)
        .output()
        .unwrap_or_else(|e| panic!("cannot run the C compiler {cc:?} (set CC): {e}"));
    assert!(
        built.status.success(),
        "{}",
        String::from_utf8_lossy(&built.stderr)
    );
    let out = Command::new(&binary).output().unwrap();
    std::fs::remove_dir_all(&dir).unwrap();
    assert!(out.status.success());
    String::from_utf8(out.stdout).unwrap()
}

#[test]
fn the_c_header_and_the_rust_record_agree_byte_for_byte() {
    let out = c_output();
    let mut lines = out.lines();

    let mut r = ContainerRecord::new(STATE_CONTAINER);
    r.runtime = RUNTIME_CRIO;
    r.flags = FLAG_CONTAINER_ID
        | FLAG_POD_UID
        | FLAG_SANDBOX
        | FLAG_NESTED
        | FLAG_V1_MEMORY
        | FLAG_ID_NOT_HEX;
    r.generation = 0x0102_0304_0506_0708;
    for (i, b) in r.container_id.iter_mut().enumerate() {
        *b = 0xa0 + i as u8;
    }
    for (i, b) in r.pod_uid.iter_mut().enumerate() {
        *b = 0x10 + i as u8;
    }
    // SAFETY: ContainerRecord is repr(C) with no implicit padding (its size
    // is asserted), so all RECORD_SIZE bytes are initialised.
    let bytes: &[u8] =
        unsafe { std::slice::from_raw_parts((&r as *const ContainerRecord).cast(), RECORD_SIZE) };
    let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    assert_eq!(lines.next().unwrap(), hex, "the bytes of one record");

    let offsets = [
        size_of::<ContainerRecord>(),
        std::mem::offset_of!(ContainerRecord, version),
        std::mem::offset_of!(ContainerRecord, state),
        std::mem::offset_of!(ContainerRecord, runtime),
        std::mem::offset_of!(ContainerRecord, flags),
        std::mem::offset_of!(ContainerRecord, generation),
        std::mem::offset_of!(ContainerRecord, container_id),
        std::mem::offset_of!(ContainerRecord, pod_uid),
    ]
    .map(|n| n.to_string())
    .join(" ");
    assert_eq!(lines.next().unwrap(), offsets, "size and field offsets");

    let constants = [
        agent_common::CONTAINERS_MAX_ENTRIES,
        STATE_HOST.into(),
        STATE_PENDING.into(),
        STATE_CONTAINER.into(),
        RUNTIME_UNKNOWN.into(),
        RUNTIME_CONTAINERD.into(),
        RUNTIME_DOCKER.into(),
        RUNTIME_CRIO.into(),
        RUNTIME_PODMAN.into(),
        FLAG_CONTAINER_ID,
        FLAG_ID_NOT_HEX,
        FLAG_POD_UID,
        FLAG_SANDBOX,
        FLAG_NESTED,
        FLAG_V1_MEMORY,
        RECORD_VERSION.into(),
    ]
    .map(|n: u32| n.to_string())
    .join(" ");
    assert_eq!(
        lines.next().unwrap(),
        format!(
            "{}/{} {constants}",
            DEFAULT_PIN_DIR,
            agent_common::CONTAINERS_MAP
        ),
        "pin path and constants"
    );
}
