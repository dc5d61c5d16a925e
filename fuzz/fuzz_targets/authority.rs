//! The `:authority` rewriter in front of HTTP/2
//! (`pidmap::testing::api::authority::Rewriter`): arbitrary bytes after the client
//! preface, fed in arbitrary chunks, as any peer of the socket can send
//! them. Run with a malloc limit (`cargo xtask fuzz` gives this target
//! `-malloc_limit_mb=64`): no input may make the rewriter allocate more,
//! whatever its header blocks decode to.
#![no_main]

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use pidmap::testing::api::authority::{Reports, Rewriter, MAX_BLOCK, MAX_FRAME_PAYLOAD};

const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

fuzz_target!(|data: &[u8]| {
    // The first byte picks the chunk sizes, the rest is what follows the
    // preface.
    let Some((&seed, rest)) = data.split_first() else {
        return;
    };
    let mut input = PREFACE.to_vec();
    input.extend_from_slice(rest);
    let mut rewriter = Rewriter::tagging();
    let reports = Reports::default();
    let mut out = BytesMut::new();
    let mut state = u32::from(seed) | 1;
    let mut fed = 0;
    while fed < input.len() {
        // A small xorshift: chunks of 1 to 8 KiB, as reads of the socket.
        state ^= state << 13;
        state ^= state >> 17;
        state ^= state << 5;
        let n = (state as usize % 8192 + 1).min(input.len() - fed);
        if rewriter
            .feed(&input[fed..fed + n], &mut out, &reports)
            .is_err()
        {
            // The connection is closed: nothing more is read.
            return;
        }
        fed += n;
        assert!(
            rewriter.held() <= 2 * MAX_BLOCK + 2 * MAX_FRAME_PAYLOAD,
            "the rewriter holds {} bytes",
            rewriter.held()
        );
        let _ = rewriter.take_resets();
        // The server takes what it is given.
        out.clear();
    }
});
