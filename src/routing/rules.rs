//! The platform's routing rules (platform-protocol.md §6.1) as a pure decision: what a frame
//! from a given socket asks the edge to do. Where the frame goes across shards is the
//! shard's job (with the [`view`](super::view)); this module only says to whom.

use std::borrow::Cow;

use serde_json::value::RawValue;

use super::envelope::{self, Inbound};
use crate::protocol::{self, ClientType, Delivery, Filter};

/// The socket a frame came from.
#[derive(Debug, Clone, Copy)]
pub struct Sender<'a> {
    pub connection_id: &'a str,
    pub client_type: ClientType,
}

#[derive(Debug)]
pub enum Action<'a> {
    /// A `ping` the runtime's auto-response did not answer: pong with the current time.
    Pong,
    /// Deliver a rendered frame to what `filter` selects on the user's shards.
    Deliver(Delivery),
    /// An RPC from a user-scoped socket to `<target>:<method>`: that machine's sockets if the
    /// machine is connected anywhere, else that session's sockets plus every user-scoped one.
    RpcToId {
        target: String,
        data: &'a RawValue,
        ack_id: Option<Cow<'a, str>>,
    },
    /// An RPC from a session- or machine-scoped socket: to every user-scoped socket, under
    /// its own event name.
    RpcToApps {
        event: Cow<'a, str>,
        data: Option<&'a RawValue>,
        ack_id: Option<Cow<'a, str>>,
    },
    /// An RPC answer, for exactly the socket that made the call.
    RpcResponse {
        ack_id: Cow<'a, str>,
        /// The `ack` to send, wrapped as `{ok:true,result}` unless it carries `ok`.
        ack: String,
    },
    /// Nothing to deliver.
    Drop(&'static str),
}

fn is_rpc(event: &str) -> bool {
    event == "rpc-call" || event == "rpc-request"
}

/// Decides what a frame asks for. `rpc-register`, `rpc-unregister` and `rpc-cancel` have no
/// server semantics on the platform and follow the default rules like any other event.
pub fn route<'a>(sender: Sender<'_>, f: Inbound<'a>) -> Action<'a> {
    let Inbound {
        event,
        data,
        ack_id,
        ack,
    } = f;
    match event.as_ref() {
        "ping" => Action::Pong,
        "broadcast" => Action::Deliver(Delivery {
            frame: protocol::relay_frame(data, sender.connection_id),
            filter: Filter::Exclude {
                connection_id: sender.connection_id.to_owned(),
            },
        }),
        "rpc-response" => match ack_id {
            Some(ack_id) => Action::RpcResponse {
                ack_id,
                ack: envelope::rpc_ack_value(ack),
            },
            None => Action::Drop("rpc-response without ackId"),
        },
        e if is_rpc(e) && sender.client_type == ClientType::UserScoped => {
            let method = envelope::field(data, "method").unwrap_or_default();
            let target = method.split(':').next().unwrap_or_default();
            match data {
                Some(data) if !target.is_empty() => Action::RpcToId {
                    target: target.to_owned(),
                    data,
                    ack_id,
                },
                _ => Action::Drop("rpc without a method"),
            }
        }
        e if is_rpc(e) => Action::RpcToApps {
            event,
            data,
            ack_id,
        },
        _ if sender.client_type != ClientType::UserScoped => Action::Deliver(Delivery {
            frame: envelope::forward_frame(&event, data, ack_id.as_deref()),
            filter: Filter::UserScopedOnly,
        }),
        _ => {
            // From an app: addressed by the payload's session or machine, else nowhere.
            let filter = if let Some(s) =
                envelope::field(data, "sessionId").filter(|s| !s.is_empty())
            {
                Filter::Session {
                    session_id: s.into_owned(),
                }
            } else if let Some(m) = envelope::field(data, "machineId").filter(|m| !m.is_empty()) {
                Filter::Machine {
                    machine_id: m.into_owned(),
                }
            } else {
                return Action::Drop("a user-scoped frame naming no sessionId or machineId");
            };
            Action::Deliver(Delivery {
                frame: envelope::forward_frame(&event, data, ack_id.as_deref()),
                filter,
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::routing::envelope::{parse, Parsed};

    fn act(t: ClientType, text: &str) -> String {
        let Parsed::Frame(f) = parse(text) else {
            panic!("{text}")
        };
        let s = Sender {
            connection_id: "me",
            client_type: t,
        };
        format!("{:?}", route(s, f))
    }

    const U: ClientType = ClientType::UserScoped;
    const S: ClientType = ClientType::SessionScoped;
    const M: ClientType = ClientType::MachineScoped;

    #[test]
    fn pings_and_broadcasts() {
        assert_eq!(act(U, r#"{"event":"ping","ackId":"a"}"#), "Pong");
        let b = act(S, r#"{"event":"broadcast","data":{"x":1}}"#);
        assert!(b.contains(r#"Exclude { connection_id: "me" }"#), "{b}");
        assert!(
            b.contains(r#"{\"event\":\"broadcast\",\"data\":{\"x\":1},\"from\":\"me\"}"#),
            "{b}"
        );
    }

    #[test]
    fn rpc_from_an_app_targets_the_id_before_the_colon() {
        let a = act(
            U,
            r#"{"event":"rpc-call","data":{"method":"mach-1:bash","params":"p"},"ackId":"k1"}"#,
        );
        assert!(a.starts_with(r#"RpcToId { target: "mach-1""#), "{a}");
        assert!(a.contains(r#"ack_id: Some("k1")"#), "{a}");
        assert!(
            act(U, r#"{"event":"rpc-request","data":{"method":"s1:x"}}"#)
                .starts_with(r#"RpcToId { target: "s1""#)
        );
        for bad in [
            r#"{"event":"rpc-call","data":{"method":""}}"#,
            r#"{"event":"rpc-call","data":{"method":":x"}}"#,
            r#"{"event":"rpc-call","data":{}}"#,
            r#"{"event":"rpc-call"}"#,
        ] {
            assert!(act(U, bad).starts_with("Drop"), "{bad}");
        }
    }

    #[test]
    fn rpc_from_the_cli_goes_to_the_apps_under_its_own_name() {
        let a = act(
            M,
            r#"{"event":"rpc-request","data":{"method":"x"},"ackId":"k"}"#,
        );
        assert!(a.starts_with(r#"RpcToApps { event: "rpc-request""#), "{a}");
        assert!(act(S, r#"{"event":"rpc-call","data":1}"#).starts_with("RpcToApps"));
    }

    #[test]
    fn rpc_responses_are_wrapped_for_the_caller() {
        let a = act(M, r#"{"event":"rpc-response","ackId":"e1.x","ack":"c2Vj"}"#);
        assert!(
            a.contains(r#"ack: "{\"ok\":true,\"result\":\"c2Vj\"}""#),
            "{a}"
        );
        assert!(act(M, r#"{"event":"rpc-response","ack":"c2Vj"}"#).starts_with("Drop"));
    }

    #[test]
    fn other_events_from_the_cli_go_to_the_apps() {
        for t in [S, M] {
            let a = act(
                t,
                r#"{"event":"session-revival-paused","data":{"sid":"s"},"ackId":"q"}"#,
            );
            assert!(a.contains("UserScopedOnly"), "{a}");
            assert!(a.contains(r#"\"ackId\":\"q\""#), "{a}");
        }
        // Unknown events are forwarded, never refused.
        assert!(act(S, r#"{"event":"brand-new-event"}"#).contains("UserScopedOnly"));
    }

    #[test]
    fn events_from_an_app_go_by_the_payloads_session_or_machine() {
        let a = act(
            U,
            r#"{"event":"acp-permission-response","data":{"sessionId":"s1","machineId":"m1"}}"#,
        );
        assert!(a.contains(r#"Session { session_id: "s1" }"#), "{a}");
        let a = act(U, r#"{"event":"x","data":{"machineId":"m1"}}"#);
        assert!(a.contains(r#"Machine { machine_id: "m1" }"#), "{a}");
        // The app's rpc-cancel {requestId} names neither: dropped, as on the platform.
        assert!(act(U, r#"{"event":"rpc-cancel","data":{"requestId":"r"}}"#).starts_with("Drop"));
        assert!(act(U, r#"{"event":"x","data":{"sessionId":""}}"#).starts_with("Drop"));
    }
}
