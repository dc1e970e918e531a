//! HTTP broadcast and stats: the user's shards from the directory's view (cached per
//! isolate for up to [`VIEW_CACHE_MS`]), then every shard at once with a per-shard timeout.
//! A shard that fails or times out is named in `failedShards`; the others still answer.
//!
//! Staleness: a cached view may lack a shard that gained its first socket in the last
//! [`VIEW_CACHE_MS`]. Every shard answers with the version of the view it holds; a newer one
//! than the cache's (a push about the new shard reached it) refreshes the cache at once and
//! the shards it did not list are visited in a second round, so with other shards in use a
//! new shard is missed for at most one prompt push (tens of milliseconds, architecture.md).
//! When no visited shard can know (every socket moved to new shards), the bound is the
//! cache's 500 ms: a socket that opened on a brand-new shard that recently can miss a
//! broadcast, as it would one sent a moment before it connected.

use serde::de::DeserializeOwned;
use serde::Serialize;
use worker::{Context, Env, Request, Response};

use std::cell::RefCell;
use std::rc::Rc;

use super::identity::{self, directory_call};
use super::observe_later;
use crate::auth::cache::BoundedMap;
use shard_policies::{KnownShard, ShardPolicy};

use crate::config::Config;
use crate::metrics::Series;
use crate::placement;
use crate::protocol::{self, ApiError, BroadcastResult};
use crate::rpc::{Delivered, DirectoryView, Observed};
use crate::runtime;
use crate::single_flight::SingleFlight;
use crate::stats::{self, ShardStats, UserContext, UserStats};

pub async fn broadcast(
    mut req: Request,
    env: &Env,
    ctx: &Context,
    cfg: &Config,
) -> Result<Response, ApiError> {
    let user = identity::http_user(&req, env, cfg).await?;
    let body = read_body(&mut req, cfg.max_message_bytes).await?;
    let delivery = protocol::parse_broadcast_body(&body, runtime::now_ms())?;
    ok_json(&deliver_to_user(env, ctx, cfg, &user, &delivery).await?)
}

/// `POST /v1/backend/publish` (admin token): the backend delivers to one user's sockets
/// without the user's token, as the platform's REST routes do through its internal
/// broadcast. `{"userId", "message", "filter"?}`; the answer is a broadcast's.
pub async fn publish(
    mut req: Request,
    env: &Env,
    ctx: &Context,
    cfg: &Config,
) -> Result<Response, ApiError> {
    super::admin::authorize(&req, cfg)?;
    let body = read_body(&mut req, cfg.max_message_bytes).await?;
    let mut v: serde_json::Value = serde_json::from_slice(&body).map_err(|e| {
        ApiError::bad_request("invalid_json", format!("body is not valid JSON: {e}"))
    })?;
    let user = v
        .as_object_mut()
        .and_then(|o| o.remove("userId"))
        .and_then(|u| u.as_str().map(str::to_owned))
        .ok_or_else(|| {
            ApiError::bad_request(
                "invalid_body",
                "`userId` must name the user to deliver to, beside `message` and `filter`",
            )
        })?;
    crate::ids::validate_id(&user)
        .map_err(|e| ApiError::bad_request("invalid_id", format!("userId: {e}")))?;
    let rest = serde_json::to_vec(&v).unwrap_or_default();
    let delivery = protocol::parse_broadcast_body(&rest, runtime::now_ms())?;
    ok_json(&deliver_to_user(env, ctx, cfg, &user, &delivery).await?)
}

/// Reads a body of at most `limit` bytes: 413 by its declared length, or as soon as the
/// chunks read so far pass the limit (a chunked body has no length), before it is read
/// whole. Each chunk's size is checked on the JavaScript side, before it is copied into wasm
/// memory, which never shrinks.
async fn read_body(req: &mut Request, limit: usize) -> Result<Vec<u8>, ApiError> {
    use wasm_bindgen::JsCast;
    let declared = req
        .headers()
        .get("content-length")
        .ok()
        .flatten()
        .and_then(|v| v.parse::<usize>().ok());
    if declared.is_some_and(|n| n > limit) {
        return Err(too_large(limit));
    }
    let unreadable = |_| ApiError::bad_request("bad_body", "could not read the request body");
    let Some(stream) = req.inner().body() else {
        return Ok(Vec::new());
    };
    let reader: worker::web_sys::ReadableStreamDefaultReader = stream.get_reader().unchecked_into();
    let mut body = Vec::with_capacity(declared.unwrap_or(0));
    loop {
        let step = worker::wasm_bindgen_futures::JsFuture::from(reader.read())
            .await
            .map_err(unreadable)?;
        let done = js_sys::Reflect::get(&step, &"done".into()).map_err(unreadable)?;
        if done.as_bool().unwrap_or(true) {
            return Ok(body);
        }
        let chunk: js_sys::Uint8Array = js_sys::Reflect::get(&step, &"value".into())
            .map_err(unreadable)?
            .dyn_into()
            .map_err(unreadable)?;
        if !fits(body.len(), chunk.length() as usize, limit) {
            // Stop reading; the runtime discards the rest.
            let _ = reader.cancel();
            return Err(too_large(limit));
        }
        let start = body.len();
        body.resize(start + chunk.length() as usize, 0);
        if let Some(dst) = body.get_mut(start..) {
            chunk.copy_to(dst);
        }
    }
}

/// Delivers to a user's sockets on every shard that may hold a recipient.
async fn deliver_to_user(
    env: &Env,
    ctx: &Context,
    cfg: &Config,
    user: &str,
    delivery: &protocol::Delivery,
) -> Result<BroadcastResult, ApiError> {
    let started = runtime::now_ms();
    let round = fresh_fan_out::<_, Delivered>(
        env,
        cfg,
        user,
        |v| broadcast_targets(cfg, v, &delivery.filter),
        "/deliver",
        delivery,
    )
    .await?;
    let took = runtime::now_ms().saturating_sub(started) as f64;
    observe_latencies(
        env,
        ctx,
        user,
        &round.view,
        Series::BroadcastDelivery,
        vec![took],
    );
    Ok(BroadcastResult {
        success: true,
        delivered: round.answers.iter().map(|d| d.delivered).sum(),
        shards: round.shards as u64,
        failed_shards: round.failed,
    })
}

/// `GET /v1/usage/limits` (Bearer): the user's stored usage limits verbatim, or the
/// platform's default on no data or any error (never a 500).
pub async fn usage_limits(req: &Request, env: &Env, cfg: &Config) -> Result<Response, ApiError> {
    let user = identity::http_user(req, env, cfg).await?;
    let v: serde_json::Value = directory_call(env, &user, "/usage", &serde_json::json!({}))
        .await
        .unwrap_or_else(|_| {
            serde_json::json!({"limitsAvailable": false, "weeklyLimits": [], "lastUpdatedAt": runtime::now_ms()})
        });
    ok_json(&v)
}

pub async fn stats(
    req: &Request,
    env: &Env,
    ctx: &Context,
    cfg: &Config,
) -> Result<Response, ApiError> {
    let user = identity::http_user(req, env, cfg).await?;
    // Concurrent stats calls for one user share one fan-out (single_flight.rs): the answer
    // is then at most one fan-out older than the call.
    let flight = STATS_IN_FLIGHT.with(Rc::clone);
    // A follower checks after 2, 4, 8, 16 ms, then every STATS_TICK_MAX_MS, for at most two
    // fan-out timeouts (a view read and a fan-out), then asks itself: a quick fan-out is
    // shared within milliseconds, a slow one costs a waiter a timer every 32 ms, not 500/s.
    let ticks = 4 + cfg.fanout_timeout_ms.saturating_mul(2) / STATS_TICK_MAX_MS;
    let mut wait = 1;
    let (answer, _shared) = flight
        .run(
            &user,
            || {
                wait = (wait * 2).min(STATS_TICK_MAX_MS);
                runtime::sleep(wait)
            },
            ticks,
            || async {
                let round = fresh_fan_out::<_, ShardStats>(
                    env,
                    cfg,
                    &user,
                    |v| targets(cfg, v),
                    "/stats",
                    &serde_json::json!({}),
                )
                .await?;
                observe_latencies(env, ctx, &user, &round.view, Series::DoResponse, round.took);
                let view = &round.view;
                let ctx = UserContext {
                    tier: view.tier.tier.clone(),
                    limit: view.tier.limit,
                    policy: cfg.policy_name.clone(),
                    rejected_tier_limit: view.rejected_tier_limit,
                    rejected_unavailable: view.rejected_unavailable,
                };
                Ok(Rc::new(stats::aggregate(ctx, &round.answers, round.failed)))
            },
        )
        .await;
    ok_json(&*answer?)
}

/// The longest a stats call waiting for another's fan-out sleeps between checks: the most it
/// adds to a slow fan-out's latency.
const STATS_TICK_MAX_MS: u32 = 32;

thread_local! {
    static STATS_IN_FLIGHT: Rc<SingleFlight<Result<Rc<UserStats>, ApiError>>> = Rc::default();
}

/// The shards a fan-out must reach, as the policy decides from the directory's
/// view: every shard holding slots or draining, whichever policy placed it.
fn targets(cfg: &Config, view: &DirectoryView) -> Vec<String> {
    let known: Vec<KnownShard> = view
        .shards
        .iter()
        .map(|s| KnownShard {
            name: s.name.clone(),
            connections: s.granted,
            draining: s.draining,
        })
        .collect();
    cfg.policy
        .fanout(&known)
        .into_iter()
        .map(|s| s.name.clone())
        .collect()
}

/// Where a broadcast goes. Unfiltered (and `exclude`) broadcasts visit every shard holding
/// slots, from the lease ledger, which knows a shard before its first socket is accepted. A
/// filtered one visits only the shards whose presence may hold a recipient, plus any shard of
/// the ledger the presence view does not list yet.
fn broadcast_targets(cfg: &Config, view: &DirectoryView, filter: &protocol::Filter) -> Vec<String> {
    use protocol::Filter;
    if matches!(filter, Filter::All | Filter::Exclude { .. }) {
        return targets(cfg, view);
    }
    let mut t = view.routing.targets(filter);
    for s in &view.shards {
        if !view.routing.shards.contains_key(&s.name) && !t.contains(&s.name) {
            t.push(s.name.clone());
        }
    }
    t
}

/// Records the caller's latencies of one series in its directory, after the answer.
fn observe_latencies(
    env: &Env,
    ctx: &Context,
    user: &str,
    view: &DirectoryView,
    series: Series,
    ms: Vec<f64>,
) {
    if ms.is_empty() {
        return;
    }
    observe_later(
        env,
        ctx,
        user,
        Observed {
            tier: view.tier.tier.clone(),
            outcomes: Vec::new(),
            latencies: ms.into_iter().map(|v| (series, v)).collect(),
        },
    );
}

/// Whether `read` bytes plus the next `chunk` stay within `limit`.
fn fits(read: usize, chunk: usize, limit: usize) -> bool {
    read.checked_add(chunk).is_some_and(|n| n <= limit)
}

fn too_large(limit: usize) -> ApiError {
    ApiError::new(
        413,
        "payload_too_large",
        format!("broadcast bodies are limited to {limit} bytes (MAX_MESSAGE_BYTES)"),
    )
}

fn ok_json<T: Serialize>(v: &T) -> Result<Response, ApiError> {
    runtime::json(200, v).map_err(|e| ApiError::new(500, "internal", e.to_string()))
}

/// How long a gateway isolate uses a user's directory view for broadcasts and stats: a
/// stats poller or a broadcast storm then costs the directory a few calls a second, not one
/// per request.
pub const VIEW_CACHE_MS: u64 = 500;

thread_local! {
    static VIEWS: RefCell<BoundedMap<(Rc<DirectoryView>, u64)>> =
        RefCell::new(BoundedMap::new(crate::auth::cache::CAPACITY));
}

/// The user's view: cached when young enough (and `fresh` is not asked), else the
/// directory's. Answers whether it came from the cache.
async fn directory_view(
    env: &Env,
    user: &str,
    fresh: bool,
) -> Result<(Rc<DirectoryView>, bool), ApiError> {
    let now = runtime::now_ms();
    if !fresh {
        let cached = VIEWS.with(|c| {
            c.borrow()
                .get(user)
                .filter(|(_, at)| now.saturating_sub(*at) < VIEW_CACHE_MS)
                .map(|(v, _)| v.clone())
        });
        if let Some(v) = cached {
            return Ok((v, true));
        }
    }
    let view: DirectoryView = directory_call(env, user, "/view", &serde_json::json!({})).await?;
    identity::remember_tier(user, &view.tier);
    let view = Rc::new(view);
    VIEWS.with(|c| c.borrow_mut().insert(user, (view.clone(), now)));
    Ok((view, false))
}

/// Drops a user's cached view (its tier changed through this isolate).
pub fn forget_view(user: &str) {
    VIEWS.with(|c| c.borrow_mut().remove(user));
}

/// An answer that says which routing view version its shard holds.
trait Versioned {
    fn view_version(&self) -> u64;
}

impl Versioned for Delivered {
    fn view_version(&self) -> u64 {
        self.view_version
    }
}

impl Versioned for ShardStats {
    fn view_version(&self) -> u64 {
        self.view_version
    }
}

/// A fan-out's result.
struct Round<T> {
    view: Rc<DirectoryView>,
    shards: usize,
    answers: Vec<T>,
    failed: Vec<String>,
    took: Vec<f64>,
}

/// Fans out to the shards `pick` chooses from the (possibly cached) view; when an answer
/// shows that view was stale, refreshes it and visits the shards it did not list.
async fn fresh_fan_out<B: Serialize, T: DeserializeOwned + Versioned>(
    env: &Env,
    cfg: &Config,
    user: &str,
    pick: impl Fn(&DirectoryView) -> Vec<String>,
    path: &str,
    body: &B,
) -> Result<Round<T>, ApiError> {
    let (view, cached) = directory_view(env, user, false).await?;
    let shards = pick(&view);
    let (mut answers, mut failed, mut took) = fan_out::<_, T>(env, &shards, path, body, cfg).await;
    let newest = answers
        .iter()
        .map(Versioned::view_version)
        .max()
        .unwrap_or(0);
    if !cached || newest <= view.routing.version {
        return Ok(Round {
            shards: shards.len(),
            view,
            answers,
            failed,
            took,
        });
    }
    let (fresh, _) = directory_view(env, user, true).await?;
    let missed: Vec<String> = pick(&fresh)
        .into_iter()
        .filter(|s| !shards.contains(s))
        .collect();
    let (more, more_failed, more_took) = fan_out::<_, T>(env, &missed, path, body, cfg).await;
    answers.extend(more);
    failed.extend(more_failed);
    took.extend(more_took);
    Ok(Round {
        shards: shards.len() + missed.len(),
        view: fresh,
        answers,
        failed,
        took,
    })
}

/// Calls `path` on every shard concurrently; returns the answers, the names
/// of shards that failed or timed out, and each answer's time in ms.
pub async fn fan_out<B: Serialize, T: DeserializeOwned>(
    env: &Env,
    shards: &[String],
    path: &str,
    body: &B,
    cfg: &Config,
) -> (Vec<T>, Vec<String>, Vec<f64>) {
    let calls = shards.iter().map(|name| async move {
        let started = runtime::now_ms();
        let r = match runtime::stub(env, placement::SHARD_BINDING, name) {
            Ok(stub) => {
                runtime::timeout(
                    cfg.fanout_timeout_ms,
                    runtime::call::<_, T>(&stub, path, Some(name), body),
                )
                .await
            }
            Err(e) => Some(Err(e)),
        };
        (name, r, runtime::now_ms().saturating_sub(started) as f64)
    });
    let mut ok = Vec::with_capacity(shards.len());
    let mut failed = Vec::new();
    let mut took = Vec::with_capacity(shards.len());
    for (name, r, ms) in futures::future::join_all(calls).await {
        match r {
            Some(Ok(v)) => {
                ok.push(v);
                took.push(ms);
            }
            Some(Err(e)) => {
                worker::console_error!("{path} on {name} failed: {e}");
                failed.push(name.clone());
            }
            None => {
                worker::console_error!("{path} on {name} timed out");
                failed.push(name.clone());
            }
        }
    }
    (ok, failed, took)
}

/// What ending a user's sockets did, across the user's shards.
#[derive(Debug, Clone, Default, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Disconnected {
    pub closed: u64,
    pub shards: usize,
    pub failed_shards: Vec<String>,
}

/// Ends the sockets `d` selects on every shard the user has (from a fresh view: this is an
/// operator's or the revocation feed's call, and must not miss a new shard).
pub async fn disconnect_user(
    env: &Env,
    cfg: &Config,
    user: &str,
    d: &crate::rpc::Disconnect,
) -> Result<Disconnected, ApiError> {
    let (view, _) = directory_view(env, user, true).await?;
    let mut shards: Vec<String> = view.shards.iter().map(|s| s.name.clone()).collect();
    for name in view.routing.shards.keys() {
        if !shards.contains(name) {
            shards.push(name.clone());
        }
    }
    let (answers, failed, _) =
        fan_out::<_, crate::rpc::Ended>(env, &shards, "/disconnect", d, cfg).await;
    Ok(Disconnected {
        closed: answers.iter().map(|e| e.closed).sum(),
        shards: shards.len(),
        failed_shards: failed,
    })
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_body_fits_up_to_the_limit_exactly() {
        assert!(super::fits(0, 10, 10));
        assert!(!super::fits(5, 6, 10));
        assert!(!super::fits(usize::MAX, 1, usize::MAX));
    }
}
