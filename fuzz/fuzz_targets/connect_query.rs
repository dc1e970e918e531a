//! The handshake: arbitrary query pairs, header values and a credential choice never panic;
//! whatever is accepted carries only valid ids, a session- or machine-scoped socket always
//! has its id, and a non-empty query value always wins over its header.
#![no_main]

use edge_gateway::auth::{upgrade_credential, Credential};
use edge_gateway::protocol::ids::validate_id;
use edge_gateway::protocol::{parse_connect_query, ClientType, HeaderIds};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    // `query \n x-client-type \n x-session-id \n x-machine-id \n authorization`
    let mut parts = text.split('\n');
    let query = parts.next().unwrap_or_default();
    fn header(p: Option<&str>) -> Option<&str> {
        p.filter(|v| !v.is_empty())
    }
    let headers = HeaderIds {
        client_type: header(parts.next()),
        session_id: header(parts.next()),
        machine_id: header(parts.next()),
    };
    let authorization = parts.next();
    let pairs: Vec<(&str, &str)> = query
        .split('&')
        .filter_map(|p| p.split_once('='))
        .collect();
    let q_get = |k: &str| pairs.iter().rev().find(|(pk, _)| *pk == k).map(|(_, v)| *v);
    match upgrade_credential(q_get("ticket"), q_get("token"), authorization) {
        Credential::Ticket(t) => assert!(!t.is_empty()),
        Credential::Token(t) => assert!(!t.is_empty()),
        Credential::Missing => {}
    }
    if let Ok(q) = parse_connect_query(pairs.iter().copied(), headers) {
        for id in q.session_id.iter().chain(q.machine_id.iter()) {
            assert!(validate_id(id).is_ok());
        }
        match q.client_type {
            ClientType::SessionScoped => assert!(q.session_id.is_some()),
            ClientType::MachineScoped => assert!(q.machine_id.is_some()),
            ClientType::UserScoped => {}
        }
        if let Some(s) = q_get("sessionId").filter(|s| !s.is_empty()) {
            assert_eq!(q.session_id.as_deref(), Some(s));
        }
    }
});
