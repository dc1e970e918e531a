//! Fuzzes the shard name parser: any string must parse or be rejected without panicking,
//! and a name that parses must be exactly the name its parts render to (one name per shard).
#![no_main]

use libfuzzer_sys::fuzz_target;
use shard_policies::parse_object_name;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Some(parsed) = parse_object_name(text) {
        assert_eq!(parsed.to_string(), text);
        assert_eq!(parsed.key.object_name(&parsed.user), text);
    }
});
