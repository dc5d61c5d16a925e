//! The config loader: a TOML file into `pidmap::Config`, validated
//! (`Config::from_toml`, what `--config FILE` runs).
#![no_main]

use libfuzzer_sys::fuzz_target;
use pidmap::Config;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(config) = Config::from_toml(text, std::path::Path::new("fuzz.toml")) else {
        return;
    };
    // The command line is laid over the file through serde_json
    // (`Config::over`): a valid file survives that unchanged.
    let json = serde_json::to_value(&config).expect("a config serializes");
    let back: Config = serde_json::from_value(json).expect("and reads back");
    assert_eq!(back, config);
    let _ = (
        config.socket_mode_bits(),
        config.containerd_resync(),
        config.containerd_max_backoff(),
        config.containerd_sync_timeout(),
        config.ring_poll_interval(),
        config.ring_batch(),
        config.exit_grace(),
    );
});
