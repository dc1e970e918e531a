//! Fuzzes the `SHARD_POLICY` grammar: any string must parse or fail without panicking, and
//! whatever parses must print a canonical form that parses back to the same value.
#![no_main]

use libfuzzer_sys::fuzz_target;
use shard_policies::PolicyConfig;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(cfg) = text.parse::<PolicyConfig>() {
        let canonical = cfg.to_string();
        assert_eq!(canonical.parse::<PolicyConfig>(), Ok(cfg), "{text:?} -> {canonical:?}");
        let again = cfg.to_string();
        assert_eq!(again, canonical);
    }
});
