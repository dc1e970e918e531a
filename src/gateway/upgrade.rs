//! `GET /v1/updates`: authenticate, place with the policy, hand the upgrade
//! to the first candidate shard that takes it.
//!
//! Pass 1 tries the candidates in the policy's order for the user's placement (its tier and
//! spread level, as the user's shards last said: `x-edge-placement`); a shard that is full,
//! draining or over its tier's latency objective refuses with its health, and the user's home
//! refuses a socket it should not take now that the user has spread (the answer's placement
//! then reorders the remaining candidates).
//! When none admitted and some were only slow, pass 2 lets the SLO rules
//! decide: admit on the least-bad shard, or shed the tier (lower tiers first).

use worker::{Context, Env, Request};

use super::caller;
use super::report::observe_later;
use crate::config::Config;
use crate::object_api::{
    Connect, Observed, Placement, PolicyNotice, CONNECT_HEADER, CONNECT_PATH, HEALTH_HEADER,
    PLACEMENT_HEADER, SHARD_HEADER,
};
use crate::placement;
use crate::placement::admission::{self, Fallback, Health, TierRank};
use crate::placement::switch::Effective;
use crate::protocol::ids;
use crate::protocol::{self, ApiError, SocketMeta};
use crate::runtime::{self, Relayed};
use observability::metrics::Outcome;
use shard_policies::PolicyConfig;

/// Most shards one connect tries before answering 503: bounds the
/// subrequests a single connect can cost when a user's shards are all full.
pub const MAX_ATTEMPTS: usize = 16;

/// The paths a client opens its socket on (`/v1/websocket` is the platform's older name).
pub fn is_upgrade_path(path: &str) -> bool {
    matches!(path, "/v1/updates" | "/v1/websocket")
}

pub async fn upgrade(
    req: &Request,
    env: &Env,
    ctx: &Context,
    cfg: &Config,
) -> Result<Relayed, ApiError> {
    require_websocket(req)?;
    let pairs = query_pairs(&req.inner().url());
    // Parameters before credentials: a bad query costs no token check or home call.
    let query = connect_query(req, &pairs)?;
    let caller = caller::upgrade_caller(req, &pairs, env, cfg).await?;
    let now = runtime::now_ms();
    let meta = socket_meta(&caller, query, now);
    let effective = super::policy::effective(env, cfg, &caller.user).await;
    let mut attempt = Attempt::new(cfg, effective, meta, caller.placement.clone(), now);
    let report = |outcome: Outcome, tier: String| {
        observe_later(
            env,
            ctx,
            &caller.user,
            Observed {
                tier,
                outcomes: vec![outcome],
                latencies: Vec::new(),
            },
        )
    };
    let first = match first_pass(env, &caller.user, &mut attempt).await {
        Pass::Done(resp) => return Ok(resp),
        Pass::Refused(r) => r,
    };
    // Pass 2, only when some candidate was merely over its latency objective.
    if let Some(resp) = second_pass(env, cfg, &attempt, &first.healths, &report).await? {
        return Ok(resp);
    }
    report(
        if first.errored && first.last.is_none() {
            Outcome::Failure
        } else {
            Outcome::Unavailable
        },
        attempt.placement.tier.clone(),
    );
    match first.last {
        // With one candidate its own answer (e.g. `shard_full`) is the most precise.
        Some(resp) if first.tried == 1 => Ok(resp),
        _ => Err(ApiError::new(
            503,
            "no_shard_available",
            "every candidate shard for this user is full or unavailable; retry shortly",
        )
        .retry_after(1)),
    }
}

fn require_websocket(req: &Request) -> Result<(), ApiError> {
    let upgrade = req.headers().get("upgrade").ok().flatten();
    if upgrade.is_some_and(|u| u.eq_ignore_ascii_case("websocket")) {
        return Ok(());
    }
    Err(ApiError::new(
        426,
        "upgrade_required",
        "Expected WebSocket upgrade: send `Upgrade: websocket`",
    ))
}

/// The query's pairs, decoded, from the URL as the runtime serialised it (the query is
/// between the first `?` and the first `#`): no full URL parse for the few parameters a
/// connect has.
fn query_pairs(url: &str) -> Vec<(String, String)> {
    let url = url.split_once('#').map_or(url, |(u, _)| u);
    let Some((_, query)) = url.split_once('?') else {
        return Vec::new();
    };
    url::form_urlencoded::parse(query.as_bytes())
        .into_owned()
        .collect()
}

/// The socket's type and ids, from the query and the header fallbacks.
fn connect_query(
    req: &Request,
    pairs: &[(String, String)],
) -> Result<protocol::ConnectQuery, ApiError> {
    let header = |name: &str| req.headers().get(name).ok().flatten();
    let (h_type, h_session, h_machine) = (
        header("x-client-type"),
        header("x-session-id"),
        header("x-machine-id"),
    );
    protocol::parse_connect_query(
        pairs.iter().map(|(k, v)| (k.as_str(), v.as_str())),
        protocol::HeaderIds {
            client_type: h_type.as_deref(),
            session_id: h_session.as_deref(),
            machine_id: h_machine.as_deref(),
        },
    )
}

fn socket_meta(caller: &caller::Caller, query: protocol::ConnectQuery, now: u64) -> SocketMeta {
    SocketMeta {
        connection_id: ids::connection_id(runtime::random16()),
        user_id: caller.user.clone(),
        client_type: query.client_type,
        session_id: query.session_id,
        machine_id: query.machine_id,
        // Only an app's: a machine or session is matched by its own id.
        correlation_id: query
            .correlation_id
            .filter(|_| query.client_type == protocol::ClientType::UserScoped),
        tier: caller.placement.tier.clone(),
        connected_at: now,
        token_hash: caller.token.as_ref().map(|t| t.token_hash.clone()),
        expires_at: caller.token.as_ref().and_then(|t| t.expires_at),
        shard: String::new(),
    }
}

/// What the first pass over the candidates came to.
enum Pass {
    /// A final answer: 101, 429 or another 4xx.
    Done(Relayed),
    Refused(Refusals),
}

/// Every candidate refused: their healths, the last refusal, how many were tried.
struct Refusals {
    healths: Vec<(String, Health)>,
    last: Option<Relayed>,
    tried: usize,
    errored: bool,
}

/// Pass 1: the candidates in the policy's order, each answer's placement reordering the rest.
async fn first_pass(env: &Env, user: &str, attempt: &mut Attempt<'_>) -> Pass {
    let mut r = Refusals {
        healths: Vec::new(),
        last: None,
        tried: 0,
        errored: false,
    };
    let mut tried: Vec<String> = Vec::new();
    while let Some(shard) = attempt.next(&tried) {
        if tried.len() >= MAX_ATTEMPTS {
            break;
        }
        tried.push(shard.clone());
        let resp = match try_shard(env, &attempt.connect(&shard)).await {
            Ok(resp) => resp,
            Err(e) => {
                worker::console_error!("connect to {shard} failed: {e}");
                r.errored = true;
                r.healths.push((shard, Health::Full));
                continue;
            }
        };
        if let Some(p) = resp
            .header(PLACEMENT_HEADER)
            .and_then(|h| Placement::parse(&h))
        {
            caller::remember_placement(user, &p);
            // The user spread (or shrank): the candidates change, the tried ones stay tried.
            attempt.learn(p);
        }
        if resp.status() != 503 {
            return Pass::Done(resp);
        }
        r.healths.push((shard, health_of(&resp)));
        r.last = Some(resp);
    }
    r.tried = tried.len();
    Pass::Refused(r)
}

/// Pass 2, when some candidate was only over its latency objective: the SLO rules admit on
/// the least-bad shard, or shed the tier (lower tiers first).
async fn second_pass(
    env: &Env,
    cfg: &Config,
    attempt: &Attempt<'_>,
    healths: &[(String, Health)],
    report: &impl Fn(Outcome, String),
) -> Result<Option<Relayed>, ApiError> {
    if !healths
        .iter()
        .any(|(_, h)| matches!(h, Health::OverLatency { .. }))
    {
        return Ok(None);
    }
    let only: Vec<Health> = healths.iter().map(|(_, h)| *h).collect();
    let Some(rank) = TierRank::of(&cfg.tiers, &attempt.placement.tier) else {
        return Ok(None);
    };
    let jitter = runtime::random16()[0];
    match admission::fallback(&only, rank, jitter) {
        Fallback::AdmitOn { index, .. } => {
            let Some((shard, _)) = healths.get(index) else {
                return Ok(None);
            };
            let mut c = attempt.connect(shard);
            c.strict = false;
            Ok(try_shard(env, &c)
                .await
                .ok()
                .filter(|resp| resp.status() != 503))
        }
        Fallback::Shed {
            retry_after_secs,
            severity,
        } => {
            report(Outcome::Unavailable, attempt.placement.tier.clone());
            Err(ApiError::new(
                503,
                "shed",
                format!(
                    "every shard for this user is {severity:.1}x over tier `{}`'s latency objective; lower tiers are shed first, retry later",
                    attempt.placement.tier
                ),
            )
            .retry_after(retry_after_secs))
        }
        Fallback::AllFull { .. } => Ok(None),
    }
}

/// One connect's walk over its candidates: the policy's order for the user's placement as
/// last learned, recomputed when a shard's answer says the placement changed; the home, when
/// the user has spread, is tried last and asked to take the socket as a last resort.
struct Attempt<'a> {
    cfg: &'a Config,
    /// The policy this connect follows (the run-time one, if an operator set one).
    policy: PolicyConfig,
    notice: PolicyNotice,
    meta: SocketMeta,
    placement: Placement,
    now: u64,
    candidates: Vec<String>,
}

impl<'a> Attempt<'a> {
    fn new(
        cfg: &'a Config,
        effective: Effective,
        meta: SocketMeta,
        placement: Placement,
        now: u64,
    ) -> Self {
        let policy = effective.policy;
        let notice = PolicyNotice {
            policy: policy.to_string(),
            drain_ms: effective.drain_ms,
            version: effective.version,
        };
        let candidates =
            placement::candidates(cfg, &policy, placement.limit, placement.spread, &meta, now);
        Self {
            cfg,
            policy,
            notice,
            meta,
            placement,
            now,
            candidates,
        }
    }

    fn learn(&mut self, p: Placement) {
        if p.spread != self.placement.spread || p.limit != self.placement.limit {
            self.candidates = placement::candidates(
                self.cfg,
                &self.policy,
                p.limit,
                p.spread,
                &self.meta,
                self.now,
            );
        }
        self.meta.tier.clone_from(&p.tier);
        self.placement = p;
    }

    /// The next candidate not tried yet.
    fn next(&self, tried: &[String]) -> Option<String> {
        self.candidates.iter().find(|c| !tried.contains(c)).cloned()
    }

    fn connect(&self, shard: &str) -> Connect {
        let home = placement::is_home(shard);
        Connect {
            meta: self.meta.clone(),
            shard: shard.to_owned(),
            strict: true,
            // The home after the user's other shards: take it if there is room at all.
            last_resort: home
                && self.candidates.len() > 1
                && self.candidates.last().is_some_and(|c| c == shard),
            spread: self.placement.spread,
            policy: Some(self.notice.clone()),
        }
    }
}

/// A refusing shard's health from its `x-edge-health` header; anything
/// unreadable counts as unable to take the socket.
fn health_of(resp: &Relayed) -> Health {
    let h = resp.header(HEALTH_HEADER);
    match h
        .as_deref()
        .and_then(|h| h.strip_prefix("over_latency;ratio="))
    {
        Some(r) => match r.parse::<f64>() {
            Ok(ratio) if ratio.is_finite() && ratio > 1.0 => Health::OverLatency { ratio },
            _ => Health::Full,
        },
        None => Health::Full,
    }
}

async fn try_shard(env: &Env, connect: &Connect) -> worker::Result<Relayed> {
    let shard = runtime::object(env, crate::object_api::SHARD_BINDING, &connect.shard)?;
    let meta = serde_json::to_string(connect)?;
    runtime::upgrade(
        &shard,
        CONNECT_PATH,
        &[(SHARD_HEADER, &connect.shard), (CONNECT_HEADER, &meta)],
    )
    .await
}

#[cfg(test)]
mod tests {
    use super::query_pairs;

    fn pairs(url: &str) -> Vec<(String, String)> {
        query_pairs(url)
    }

    #[test]
    fn the_query_is_decoded_and_ends_at_the_fragment() {
        assert_eq!(
            pairs("https://h/v1/updates?clientType=session-scoped&sessionId=a%20b+c#x=1"),
            vec![
                ("clientType".to_owned(), "session-scoped".to_owned()),
                ("sessionId".to_owned(), "a b c".to_owned()),
            ]
        );
    }

    #[test]
    fn no_query_is_no_pairs() {
        assert!(pairs("https://h/v1/updates").is_empty());
        assert!(pairs("https://h/v1/updates?").is_empty());
        assert!(pairs("https://h/v1/updates#?a=1").is_empty());
    }

    #[test]
    fn a_second_question_mark_belongs_to_the_query() {
        assert_eq!(
            pairs("https://h/v1/updates?token=a?b&x"),
            vec![
                ("token".to_owned(), "a?b".to_owned()),
                ("x".to_owned(), String::new()),
            ]
        );
    }
}
