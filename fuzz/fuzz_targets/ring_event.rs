//! `pidmap::testing::ebpf::event::decode`: one record of the kernel's event ring
//! buffer (fixed layouts read with unaligned loads; a corrupt or short
//! record must be refused, never misread).
#![no_main]

use libfuzzer_sys::fuzz_target;
use pidmap::testing::ebpf::event::decode;

fuzz_target!(|data: &[u8]| {
    if let Ok(event) = decode(data) {
        if let Some(path) = event.attach.and_then(|a| a.path) {
            assert!(path.starts_with('/'), "{path:?}");
        }
    }
});
