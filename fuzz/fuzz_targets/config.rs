//! The config parser and the RADIUS section: any text is a config or a clear error, and an
//! error never quotes a secret.
#![no_main]

use libfuzzer_sys::fuzz_target;
use std::path::Path;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    match sparekey::Config::parse(text, Path::new("/fuzz/sparekey.toml")) {
        Ok(c) => {
            if let Err(e) = sparekey_radiusd::config::RadiusConfig::from_config(&c) {
                assert!(e.contains("/fuzz/sparekey.toml") || e.contains("[radius]"), "{e}");
            }
        }
        Err(e) => assert!(e.to_string().contains("/fuzz/sparekey.toml")),
    }
});
