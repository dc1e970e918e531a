//! Connect queries: arbitrary key/value pairs never panic; whatever is accepted carries only
//! valid ids, and a session- or machine-scoped socket always has its id.
#![no_main]

use edge_gateway::ids::validate_id;
use edge_gateway::protocol::{parse_connect_query, ClientType};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let pairs: Vec<(&str, &str)> = text
        .split('&')
        .filter_map(|p| p.split_once('='))
        .collect();
    if let Ok(q) = parse_connect_query(pairs) {
        for id in q.session_id.iter().chain(q.machine_id.iter()) {
            assert!(validate_id(id).is_ok());
        }
        match q.client_type {
            ClientType::SessionScoped => assert!(q.session_id.is_some()),
            ClientType::MachineScoped => assert!(q.machine_id.is_some()),
            ClientType::UserScoped => {}
        }
    }
});
