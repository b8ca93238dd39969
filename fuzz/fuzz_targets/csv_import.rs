//! The CSV importer: any bytes give rows or a list of bad rows with line numbers, never a
//! panic; every row it accepts holds names that parse again.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    match sparekey::transfer::parse_csv(data) {
        Ok(rows) => {
            for r in rows {
                assert!(sparekey::Username::parse(r.username.as_str()).is_ok());
                assert!(r.aliases.map_or(0, |a| a.len()) <= sparekey::model::MAX_ALIASES);
            }
        }
        Err(bad) => assert!(!bad.is_empty()),
    }
});
