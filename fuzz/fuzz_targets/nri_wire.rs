//! NRI's wire as the runtime's socket delivers it (`pidmap::testing::runtime::nri`):
//! arbitrary bytes, fed in arbitrary chunks, split into mux frames and ttRPC messages by
//! `wire::Decoder`, and every message on the plugin's connection answered by `answer` —
//! what a runtime (or whatever holds the NRI socket) can make the agent decode. Run with a
//! malloc limit (`cargo xtask fuzz` gives this target `-malloc_limit_mb=64`): a length field
//! may not make the decoder allocate what was never sent.
#![no_main]

use libfuzzer_sys::fuzz_target;
use pidmap::testing::runtime::nri::{
    answer,
    wire::{Decoder, MAX_TTRPC_MESSAGE},
};

fuzz_target!(|data: &[u8]| {
    // The first byte picks the chunk sizes.
    let Some((&seed, input)) = data.split_first() else {
        return;
    };
    let mut decoder = Decoder::default();
    let mut state = u32::from(seed) | 1;
    let mut fed = 0;
    while fed < input.len() {
        state ^= state << 13;
        state ^= state >> 17;
        state ^= state << 5;
        let n = (state as usize % 4096 + 1).min(input.len() - fed);
        decoder.feed(&input[fed..fed + n]);
        fed += n;
        loop {
            match decoder.next_message() {
                Ok(Some(message)) => {
                    assert!(message.data.len() <= MAX_TTRPC_MESSAGE);
                    if message.conn == 1 {
                        let _ = answer(&message.data, &mut |_| {});
                    }
                }
                Ok(None) => break,
                // The connection is closed: nothing more is read.
                Err(_) => return,
            }
        }
    }
});
