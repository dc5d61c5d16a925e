//! `pidmap::testing::proc::parse_stat_bytes`: a `/proc/PID/stat` line, whose command
//! name (set by the process itself) may hold any bytes, spaces and
//! parentheses included.
#![no_main]

use libfuzzer_sys::fuzz_target;
use pidmap::testing::proc::{parse_stat, parse_stat_bytes};

fuzz_target!(|data: &[u8]| {
    let parsed = parse_stat_bytes(data);
    if let Ok(text) = std::str::from_utf8(data) {
        // The text form is the same parser.
        assert_eq!(format!("{:?}", parse_stat(text)), format!("{parsed:?}"));
    }
});
