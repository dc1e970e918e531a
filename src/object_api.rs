//! What each Durable Object is asked and what it answers: one type per message, naming its
//! path and its reply ([`Message`]), so a call site names a type and never pairs a path
//! string with a body by hand, and each object's router matches on these types' paths.
//! Pure: shared by the gateway and every object; the runtime's `ask` does the sending.
//!
//! | object | messages |
//! |---|---|
//! | a user's home shard `cm:{user}` (the user's authority) | [`Acquire`], [`Release`], [`ShardReport`], [`RouteLookup`], [`TierGet`], [`SetTier`], [`IssueTicket`], [`Redeem`], [`UsageGet`], [`UsageSet`], [`Observed`], [`StatsRequest`], [`BroadcastRequest`], [`DisconnectUser`] |
//! | any shard | the upgrade ([`CONNECT_PATH`], with [`Connect`] in [`CONNECT_HEADER`]), [`Deliver`], [`DeliverBatch`], [`Handoff`], [`AckRelay`], [`Reclaim`], [`PushView`], [`Disconnect`], [`Knob`] |
//! | a registry `reg:{k}` | [`Ingest`], [`SnapshotRequest`] |
//! | the revocation feed | [`Ensure`], [`FeedStatus`] |
//! | the policy control `control` | [`PolicyGet`], [`PolicySet`] |
//! | a registry, a home, any shard: a run-time policy switch on its way | [`NoticeUsers`], [`PolicyNotice`], [`ApplyPolicy`] |

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::auth::TokenRef;
use crate::protocol::{BroadcastResult, CredentialEnd, Delivery, SocketMeta};
use crate::routing::view::{RoutingView, ShardPresence};
use observability::metrics::{GlobalMetrics, Observations, Outcome, Series, ShardGauges};
use observability::stats::{ShardStats, UserStats};

/// A message to a Durable Object: the path its router matches and the type it answers.
pub trait Message: Serialize {
    const PATH: &'static str;
    type Reply: Serialize + DeserializeOwned;
}

macro_rules! message {
    ($($t:ty => $path:literal, $reply:ty;)*) => {
        $(impl Message for $t {
            const PATH: &'static str = $path;
            type Reply = $reply;
        })*

        /// Every message's path, in declaration order (each names one message).
        #[cfg(test)]
        const PATHS: &[&str] = &[$($path),*];
    };
}

/// The empty answer of a message that only needs to arrive.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Done {}

// ---------------------------------------------------------------------------------------------
// Bindings and names

/// `wrangler.toml` binding of the shard class.
pub const SHARD_BINDING: &str = "CONNECTION_MANAGER";
/// `wrangler.toml` binding of the metrics registry class.
pub const REGISTRY_BINDING: &str = "REGISTRY";
/// `wrangler.toml` binding of the revocation feed's class, and the feed object's name.
pub const REVOCATIONS_BINDING: &str = "REVOCATIONS";
pub const REVOCATIONS_NAME: &str = "revocations";
/// `wrangler.toml` binding of the policy control's class, and its one object's name.
pub const CONTROL_BINDING: &str = "CONTROL";
pub const CONTROL_NAME: &str = "control";
/// The D1 binding of the platform's `RevokedToken` table (the platform's binding name).
pub const REVOCATION_DB: &str = "DB";

// ---------------------------------------------------------------------------------------------
// Headers

/// The receiving shard's own name, sent with every call to a shard (objects are not told it).
pub const SHARD_HEADER: &str = "x-edge-shard";
/// The connect metadata from the gateway on an upgrade, JSON [`Connect`].
pub const CONNECT_HEADER: &str = "x-edge-connect";
/// A refusing shard's health: `full`, or `over_latency;ratio=R`.
pub const HEALTH_HEADER: &str = "x-edge-health";
/// What a connect answer tells the gateway about the user's placement ([`Placement`]).
pub const PLACEMENT_HEADER: &str = "x-edge-placement";
/// The path of an upgrade handed to a shard.
pub const CONNECT_PATH: &str = "/shard/connect";

// ---------------------------------------------------------------------------------------------
// Gateway -> shard: the upgrade

/// Gateway -> shard, with the upgrade request. `meta.tier` is the tier the gateway assumed;
/// the user's home resolves the real one.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Connect {
    pub meta: SocketMeta,
    pub shard: String,
    /// First pass: a shard over its latency objective refuses (503) so the gateway can try a
    /// healthier candidate. The second pass admits anyway.
    #[serde(default = "yes")]
    pub strict: bool,
    /// The user's other candidates refused: the home takes the socket even though the user
    /// has spread beyond it.
    #[serde(default)]
    pub last_resort: bool,
    /// The spread level the gateway placed by (reported in the `connected` frame).
    #[serde(default)]
    pub spread: u32,
    /// The policy the gateway placed by (canonical form), with the control's version and
    /// drain window: a home that missed the switch's notice learns it here.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub policy: Option<PolicyNotice>,
}

fn yes() -> bool {
    true
}

/// A user's placement as its home last decided it: the tier (and its limit) and the spread
/// level (`shard_policies::spread`). Carried in [`PLACEMENT_HEADER`] as
/// `tier=<name>;limit=<n>;spread=<l>`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Placement {
    pub tier: String,
    pub limit: u32,
    pub spread: u32,
}

impl Placement {
    pub fn header(&self) -> String {
        format!(
            "tier={};limit={};spread={}",
            self.tier, self.limit, self.spread
        )
    }

    /// Parses [`Placement::header`]; `None` for anything else.
    pub fn parse(h: &str) -> Option<Self> {
        let mut p = Placement::default();
        let (mut tier, mut limit, mut spread) = (false, false, false);
        for part in h.split(';') {
            let (k, v) = part.split_once('=')?;
            match k.trim() {
                "tier" => {
                    p.tier = v.trim().to_owned();
                    tier = !p.tier.is_empty();
                }
                "limit" => {
                    p.limit = v.trim().parse().ok()?;
                    limit = true;
                }
                "spread" => {
                    p.spread = v.trim().parse().ok()?;
                    spread = true;
                }
                _ => {}
            }
        }
        (tier && limit && spread).then_some(p)
    }
}

// ---------------------------------------------------------------------------------------------
// Shard -> home

/// Shard -> home: lease more slots.
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
    /// Nothing now, but slots are on their way to another shard and will be reclaimable in a
    /// moment: ask again shortly instead of refusing.
    pub retry: bool,
    /// The user's placement as the home resolves it now.
    pub placement: Placement,
    /// The version of the routing view, so the shard knows whether its copy is stale.
    pub view_version: u64,
}

/// Shard -> home: slots given back (already removed from the lease). `reset` says the shard
/// is empty with no lease: forget it entirely.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Release {
    pub shard: String,
    pub n: u32,
    pub open: u32,
    pub draining: bool,
    pub reset: bool,
}

/// Shard -> home: what changed on a shard, sent after the fact (never on a connect's or a
/// close's path), one in flight at a time. Each report replaces the shard's entry in the
/// home's book: its presence (where routing finds recipients), its stats (what the user's
/// stats add up), and, every few seconds, the metrics it observed since its last report.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ShardReport {
    pub shard: String,
    /// Changes when the shard object restarts (its sequence numbers start again).
    pub incarnation: u64,
    pub seq: u64,
    pub presence: ShardPresence,
    pub stats: ShardStats,
    /// Observations since the last report that carried them, and the gauges to go with them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metrics: Option<ReportedMetrics>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ReportedMetrics {
    pub gauges: ShardGauges,
    pub observed: Observations,
}

/// Home -> shard: the answer to a report.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ReportAck {
    pub view_version: u64,
    pub placement: Placement,
}

/// Shard -> home: the current routing view. With `wait_for`, when the view does not know that
/// target yet, the home answers once it does (a socket that has just connected on another
/// shard is reported within milliseconds) or after `wait_ms`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RouteLookup {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wait_for: Option<String>,
    #[serde(default)]
    pub wait_ms: u32,
}

// ---------------------------------------------------------------------------------------------
// Gateway -> home

/// A user's tier as its home resolves it: the operator's override, else `DEFAULT_TIER`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TierInfo {
    pub tier: String,
    pub limit: u32,
    /// The override the operator set, if any (it may name a tier no longer configured, which
    /// then resolves to the default).
    #[serde(rename = "override")]
    pub overridden: Option<String>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TierGet {}

/// Admin -> home: set (`Some`) or clear (`None`) the user's tier override.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SetTier {
    pub tier: Option<String>,
}

/// Gateway -> home: count a ticket against the user's rate limit and, when allowed, remember
/// the token it is issued for under its nonce.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IssueTicket {
    pub nonce: String,
    pub token: TokenRef,
}

/// Gateway -> home: redeem a verified ticket's nonce (single use).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Redeem {
    pub nonce: String,
    pub exp_ms: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Redeemed {
    pub result: crate::auth::ticket_book::Redeem,
    /// The user's tier, so a ticket connect needs no other call.
    pub tier: TierInfo,
    /// The token the ticket was issued for (none for a ticket minted elsewhere).
    #[serde(default)]
    pub token: Option<TokenRef>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct UsageGet {}

/// The user's usage limits (`update-usage-limits`), stored whole as the platform does.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct UsageSet(pub serde_json::Value);

/// Gateway -> home: what the gateway saw for the user (connect outcomes it decided, broadcast
/// and stats times), added to the user's metrics.
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
pub struct StatsRequest {}

/// Gateway -> home: deliver to the user's sockets on every shard that may hold a recipient.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct BroadcastRequest(pub Delivery);

/// Gateway or revocation feed -> home: end the sockets a [`Disconnect`] selects on every
/// shard of the user.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct DisconnectUser(pub Disconnect);

/// What ending a user's sockets did, across the user's shards.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Disconnected {
    pub closed: u64,
    pub shards: usize,
    pub failed_shards: Vec<String>,
}

// ---------------------------------------------------------------------------------------------
// Any shard

/// Deliver one frame to the sockets its filter selects on the receiving shard.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Deliver(pub Delivery);

/// Several deliveries in one call (the home's presence notices), in order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct DeliverBatch(pub Vec<Delivery>);

/// What the home held for a moved identity, handed to the shard it is back on: sent to its
/// sockets there, except the frames each got directly meanwhile.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Handoff(pub Vec<Delivery>);

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Delivered {
    pub delivered: u64,
    /// Of those, the sockets the filter is *about*: the machine's for `machine-scoped-only`,
    /// the session's for `all-interested-in-session`, all of them otherwise. An RPC is
    /// answerable only when this is not zero.
    #[serde(default)]
    pub primary: u64,
    /// The version of the routing view the delivering shard holds.
    #[serde(default)]
    pub view_version: u64,
}

impl Delivered {
    pub fn sum(self, o: Delivered) -> Delivered {
        Delivered {
            delivered: self.delivered + o.delivered,
            primary: self.primary + o.primary,
            view_version: self.view_version.max(o.view_version),
        }
    }
}

/// Shard -> shard: an RPC answer for a socket of the receiving shard. `ack_id` is the sealed
/// reference the target echoed (see `routing::ack_id`); `ack` the JSON to send.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AckRelay {
    pub ack_id: String,
    pub ack: String,
}

/// Home -> shard: give back the slots no socket holds, and say what you hold.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Reclaim {}

/// Shard -> home: the answer to a reclaim, with the shard's report (so a reconcile pass also
/// corrects presence and stats, e.g. after a restart lost every socket).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Reclaimed {
    #[serde(flatten)]
    pub lease: crate::placement::lease::Returned,
    #[serde(default)]
    pub report: Option<ShardReport>,
}

/// Home -> shard: the routing view, pushed when it changed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct PushView(pub RoutingView);

/// End, at once, the sockets a selector picks on the receiving shard. At most one of the ids
/// is set; none means every socket of the user.
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
    pub reason: Option<CredentialEnd>,
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

    pub fn why(&self) -> CredentialEnd {
        self.reason.unwrap_or(CredentialEnd::Disconnected)
    }
}

/// Shard -> caller: how many sockets a [`Disconnect`] ended.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ended {
    pub closed: u64,
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
    /// Deliveries answer 500.
    Error,
    /// Deliveries answer only after the fan-out timeout.
    Hang,
}

// ---------------------------------------------------------------------------------------------
// Registry and revocation feed

/// Home -> registry: the user's gauges and the observations since its last push, numbered
/// by the home, so a retried push is applied once (`registry::book`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Ingest(pub observability::registry::Push);

/// Registry -> home: the push was applied, or was one already applied (a retry); and the
/// last global policy switch the registry was told of, unless the user has a policy of its
/// own, so a home no registry listed when the switch was sent learns it by its first push.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ingested {
    #[serde(default)]
    pub duplicate: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub policy: Option<PolicyNotice>,
}

/// Test-only (`TEST_KNOBS=on`): how a registry object's storage is laid out.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RegistryStorage {}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnapshotRequest {}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ensure {}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct FeedStatus {}

// ---------------------------------------------------------------------------------------------
// The run-time policy switch (`placement::switch`)

/// Gateway -> control: the policies set at run time.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PolicyGet {}

/// Gateway (admin) -> control: set or clear (`switch: None`) the policy for everyone, or for
/// `user`. Answers the new state; the control then tells the users' homes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PolicySet {
    pub user: Option<String>,
    pub switch: Option<crate::placement::switch::Switch>,
    /// For a clear: the drain window back to the config's policy.
    pub drain_ms: u64,
}

/// The state after a [`PolicySet`], or why it was refused (nothing changed then).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PolicySetReply {
    pub state: crate::placement::switch::PolicyState,
    pub refused: Option<String>,
}

/// A user's policy changed: what its shards must follow from now on. `version` orders
/// notices (a shard applies only a newer one), so a switch and a switch back in quick
/// succession settle on the last.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PolicyNotice {
    pub policy: String,
    pub drain_ms: u64,
    pub version: u64,
}

/// Control -> registry: tell the home of every user this registry holds with open sockets,
/// except `except` (users with a policy of their own).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NoticeUsers {
    pub notice: PolicyNotice,
    pub except: Vec<String>,
}

/// Home -> each of the user's other shards.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApplyPolicy(pub PolicyNotice);

/// A shard -> the user's home: identities it told to move (`routing::moves`), and
/// deliveries it got for them after they left.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Hold {
    pub identities: Vec<crate::routing::moves::Identity>,
    pub deliveries: Vec<Delivery>,
    /// The shard that sends it: where the identities moved from, or came back to.
    pub from: String,
    /// Identities that moved from `from` and came back to it (its reports cannot say so: a
    /// report taken before the move still lists them there).
    pub back: Vec<crate::routing::moves::Identity>,
    /// Per identity in `identities`, hashes of the frames its old socket got last.
    pub got: Vec<Vec<u64>>,
    /// The moved identities `deliveries` reach (held here if this comes before the hold).
    pub reached: Vec<crate::routing::moves::Identity>,
}

/// What a notice did on one shard.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Applied {
    /// The shard began draining: the policy no longer places sockets on it.
    pub draining: bool,
    /// Sockets it will move over the window.
    pub sockets: u32,
}

message! {
    Acquire => "/home/acquire", Granted;
    Release => "/home/release", Done;
    ShardReport => "/home/report", ReportAck;
    RouteLookup => "/home/route", RoutingView;
    TierGet => "/home/tier", TierInfo;
    SetTier => "/home/tier/set", TierInfo;
    IssueTicket => "/home/ticket/issue", crate::auth::ticket_book::Issue;
    Redeem => "/home/ticket/redeem", Redeemed;
    UsageGet => "/home/usage", serde_json::Value;
    UsageSet => "/home/usage/set", Done;
    Observed => "/home/observe", Done;
    StatsRequest => "/home/stats", UserStats;
    BroadcastRequest => "/home/broadcast", BroadcastResult;
    DisconnectUser => "/home/disconnect", Disconnected;
    Deliver => "/shard/deliver", Delivered;
    DeliverBatch => "/shard/deliver-batch", Delivered;
    Handoff => "/shard/handoff", Delivered;
    AckRelay => "/shard/ack", Delivered;
    Reclaim => "/shard/reclaim", Reclaimed;
    PushView => "/shard/view", Done;
    Disconnect => "/shard/disconnect", Ended;
    Knob => "/shard/knob", Knob;
    Ingest => "/registry/ingest", Ingested;
    SnapshotRequest => "/registry/snapshot", GlobalMetrics;
    RegistryStorage => "/registry/storage", serde_json::Value;
    Ensure => "/revocations/ensure", Done;
    FeedStatus => "/revocations/status", crate::auth::revocation::Feed;
    PolicyGet => "/control/policy", crate::placement::switch::PolicyState;
    PolicySet => "/control/policy/set", PolicySetReply;
    NoticeUsers => "/registry/notice", Done;
    Hold => "/home/hold", Done;
    PolicyNotice => "/home/policy", Applied;
    ApplyPolicy => "/shard/policy", Applied;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_path_names_one_message() {
        let mut paths = PATHS.to_vec();
        paths.push(CONNECT_PATH);
        let distinct: std::collections::BTreeSet<_> = paths.iter().collect();
        assert_eq!(distinct.len(), paths.len());
        assert!(PATHS.contains(&Handoff::PATH) && PATHS.contains(&Acquire::PATH));
    }

    #[test]
    fn a_placement_round_trips_through_its_header() {
        let p = Placement {
            tier: "pro".into(),
            limit: 100,
            spread: 2,
        };
        assert_eq!(p.header(), "tier=pro;limit=100;spread=2");
        assert_eq!(Placement::parse(&p.header()), Some(p));
        assert_eq!(Placement::parse("tier=pro;limit=x;spread=1"), None);
        assert_eq!(Placement::parse("tier=pro;limit=1"), None);
        assert_eq!(Placement::parse(""), None);
    }

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
        assert_eq!(all.why(), CredentialEnd::Disconnected);
    }

    #[test]
    fn wrappers_carry_their_payload_as_is() {
        let d: Deliver = serde_json::from_str(r#"{"frame":"x","filter":{"type":"all"}}"#).unwrap();
        assert_eq!(d.0.frame, "x");
        assert_eq!(
            serde_json::to_string(&UsageSet(serde_json::json!({"a": 1}))).unwrap(),
            r#"{"a":1}"#
        );
    }

    #[test]
    fn an_ingest_answer_carries_a_policy_only_when_the_registry_has_one() {
        // A registry of the previous version answers without it; a home of that version
        // reads the new answer too (serde ignores the field it does not know).
        let old: Ingested = serde_json::from_str(r#"{"duplicate":true}"#).unwrap();
        assert_eq!((old.duplicate, old.policy), (true, None));
        assert_eq!(
            serde_json::to_string(&Ingested::default()).unwrap(),
            r#"{"duplicate":false}"#
        );
        let n = PolicyNotice {
            policy: "single".into(),
            drain_ms: 1000,
            version: 3,
        };
        let with = Ingested {
            duplicate: false,
            policy: Some(n.clone()),
        };
        let back: Ingested = serde_json::from_str(&serde_json::to_string(&with).unwrap()).unwrap();
        assert_eq!(back.policy, Some(n));
    }
}
