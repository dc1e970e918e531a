//! Messages between the gateway, the shards and the directory (internal
//! HTTP with JSON bodies). Pure types, shared by every side.

use serde::{Deserialize, Serialize};

use crate::metrics::{Outcome, Series};
use crate::protocol::SocketMeta;

/// Gateway -> shard, with the upgrade request. `meta.tier` is the user's tier as the
/// gateway resolved it (the directory stays the authority for the limit).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Connect {
    pub meta: SocketMeta,
    pub shard: String,
    /// First pass: a shard over its latency objective refuses (503) so the
    /// gateway can try a healthier candidate. The second pass admits anyway.
    #[serde(default = "yes")]
    pub strict: bool,
}

fn yes() -> bool {
    true
}

pub use crate::routing::view::{PresenceReport, RoutingView};

/// Shard -> directory: lease more slots.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Acquire {
    pub shard: String,
    pub want: u32,
    pub need: u32,
    pub open: u32,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Granted {
    pub granted: u32,
    /// The grant's sequence number, echoed back in reclaim answers.
    pub seq: u64,
    /// Nothing now, but slots are on their way to another shard and will be
    /// reclaimable in a moment: ask again shortly instead of refusing.
    pub retry: bool,
    /// The user's shards and where its recipients are (see `routing::view`).
    pub view: RoutingView,
    /// The user's tier and limit as the directory resolved them for this grant.
    pub tier: TierInfo,
}

/// A user's tier as the directory resolves it: the operator's override, else `DEFAULT_TIER`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TierInfo {
    pub tier: String,
    pub limit: u32,
    /// The override the operator set, if any (it may name a tier no longer configured,
    /// which then resolves to the default).
    #[serde(rename = "override")]
    pub overridden: Option<String>,
}

/// Admin -> directory: set (`Some`) or clear (`None`) the user's tier override.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SetTier {
    pub tier: Option<String>,
}

/// Gateway -> directory: redeem a verified ticket's nonce (single use).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Redeem {
    pub nonce: String,
    pub exp_ms: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Redeemed {
    pub result: crate::auth::ticket_book::Redeem,
    /// The user's tier, so a ticket connect needs no other directory call.
    pub tier: TierInfo,
    /// The token the ticket was issued for (none for a ticket minted elsewhere).
    #[serde(default)]
    pub token: Option<crate::auth::TokenRef>,
}

/// Gateway -> directory: count a ticket against the user's rate limit and, when allowed,
/// remember the token it is issued for under its nonce.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IssueTicket {
    pub nonce: String,
    pub token: crate::auth::TokenRef,
}

/// Shard -> directory: slots given back (already removed from the lease).
/// `reset` says the shard is empty with no lease: forget it entirely.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Release {
    pub shard: String,
    pub n: u32,
    pub open: u32,
    pub draining: bool,
    pub reset: bool,
}

/// Shard -> directory: the answer to a reclaim, with the shard's presence (so a reconcile
/// pass also corrects presence, e.g. after a restart lost every socket).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Reclaimed {
    #[serde(flatten)]
    pub lease: crate::lease::Returned,
    #[serde(default)]
    pub presence: Option<PresenceReport>,
}

/// Directory -> shard: the answer to a presence report, the view as it is now.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Presented {
    pub view: RoutingView,
}

/// Shard -> shard: an RPC answer for a socket of the receiving shard. `ack_id` is the sealed
/// reference the target echoed (see `routing::ack_id`); `ack` the JSON to send.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AckRelay {
    pub ack_id: String,
    pub ack: String,
}

/// Directory -> gateway: what fan-outs and stats need.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DirectoryView {
    pub shards: Vec<ViewShard>,
    pub tier: TierInfo,
    /// Where the user's recipients are, so a broadcast visits only shards that may hold one.
    #[serde(default)]
    pub routing: RoutingView,
    pub rejected_tier_limit: u64,
    pub rejected_unavailable: u64,
}

/// One shard of the user's set, as the directory knows it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ViewShard {
    pub name: String,
    /// Slots it holds: an upper bound on its sockets (its reported count
    /// lags: a new shard reports 0 before its first accept).
    pub granted: u32,
    pub draining: bool,
}

/// Gateway -> directory: what the gateway saw for a user (connect outcomes it
/// decided, broadcast fan-out and per-shard stats times), added to the user's
/// metrics.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Observed {
    pub tier: String,
    #[serde(default)]
    pub outcomes: Vec<Outcome>,
    #[serde(default)]
    pub latencies: Vec<(Series, f64)>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Delivered {
    pub delivered: u64,
    /// Of those, the sockets the filter is *about*: the machine's for `machine-scoped-only`,
    /// the session's for `all-interested-in-session`, all of them otherwise. An RPC is
    /// answerable only when this is not zero.
    #[serde(default)]
    pub primary: u64,
    /// The version of the routing view the delivering shard holds: newer than the caller's
    /// means the caller's view is stale.
    #[serde(default)]
    pub view_version: u64,
}

/// Test-only fault and latency injection for one shard (`TEST_KNOBS=on`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Knob {
    /// Added to the handling of connects, messages and deliveries.
    #[serde(default)]
    pub latency_ms: u32,
    #[serde(default)]
    pub fault: Option<Fault>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Fault {
    /// Fan-out calls (deliver, stats) answer 500.
    Error,
    /// Fan-out calls answer only after the fan-out timeout.
    Hang,
}

/// Gateway or revocation feed -> shard: end the sockets a selector picks, at once. At most one
/// of the ids is set; none means every socket of the user on the shard.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Disconnect {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token_hash: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub session_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub machine_id: Option<String>,
    /// Why: `revoked` (the default for a token hash) or `disconnected`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<crate::protocol::CredentialEnd>,
}

impl Disconnect {
    /// The hibernation tag that finds the sockets, or `None` for all of them; `Err` when more
    /// than one selector is set.
    pub fn tag(&self) -> Result<Option<String>, &'static str> {
        use crate::protocol::{machine_tag, session_tag, token_tag};
        match (&self.token_hash, &self.session_id, &self.machine_id) {
            (None, None, None) => Ok(None),
            (Some(h), None, None) => Ok(Some(token_tag(h))),
            (None, Some(s), None) => Ok(Some(session_tag(s))),
            (None, None, Some(m)) => Ok(Some(machine_tag(m))),
            _ => Err("name at most one of `tokenHash`, `sessionId`, `machineId`"),
        }
    }

    pub fn why(&self) -> crate::protocol::CredentialEnd {
        self.reason
            .unwrap_or(crate::protocol::CredentialEnd::Disconnected)
    }
}

/// Shard -> caller: how many sockets a [`Disconnect`] ended.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ended {
    pub closed: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_disconnect_names_at_most_one_selector() {
        let all = Disconnect::default();
        assert_eq!(all.tag(), Ok(None));
        let by_token = Disconnect {
            token_hash: Some("ab".into()),
            ..Disconnect::default()
        };
        assert_eq!(by_token.tag(), Ok(Some("tok:ab".into())));
        let by_machine: Disconnect = serde_json::from_str(r#"{"machineId":"m1"}"#).unwrap();
        assert_eq!(by_machine.tag(), Ok(Some("machine:m1".into())));
        let two: Disconnect =
            serde_json::from_str(r#"{"machineId":"m1","sessionId":"s1"}"#).unwrap();
        assert!(two.tag().is_err());
        assert!(serde_json::from_str::<Disconnect>(r#"{"user":"x"}"#).is_err());
        assert_eq!(all.why(), crate::protocol::CredentialEnd::Disconnected);
    }
}
