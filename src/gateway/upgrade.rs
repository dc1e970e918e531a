//! `GET /v1/updates`: authenticate, place with the policy, hand the upgrade
//! to the first candidate shard that takes it.

use worker::{Context, Env, Headers, Method, Request, Response};

use super::authenticate;
use crate::config::Config;
use crate::ids;
use crate::placement;
use crate::protocol::{self, ApiError, SocketMeta};
use crate::rpc::{Connect, Rejection};
use crate::runtime::{self, CONNECT_HEADER, SHARD_HEADER};

/// Most shards one connect tries before answering 503: bounds the
/// subrequests a single connect can cost when a user's shards are all full.
pub const MAX_ATTEMPTS: usize = 16;

pub async fn upgrade(
    req: &Request,
    env: &Env,
    ctx: &Context,
    cfg: &Config,
) -> Result<Response, ApiError> {
    let upgrade = req.headers().get("upgrade").ok().flatten();
    if !upgrade.is_some_and(|u| u.eq_ignore_ascii_case("websocket")) {
        return Err(ApiError::new(
            426,
            "upgrade_required",
            "this endpoint speaks WebSocket: send `Upgrade: websocket`",
        ));
    }
    let caller = authenticate(req, cfg)?;
    let url = req
        .url()
        .map_err(|_| ApiError::bad_request("bad_url", "request URL does not parse"))?;
    let pairs: Vec<(String, String)> = url.query_pairs().into_owned().collect();
    let query = protocol::parse_connect_query(pairs.iter().map(|(k, v)| (k.as_str(), v.as_str())))?;
    let now = runtime::now_ms();
    let meta = SocketMeta {
        connection_id: ids::connection_id(runtime::random16()),
        user_id: caller.claims.sub.clone(),
        client_type: query.client_type,
        session_id: query.session_id,
        machine_id: query.machine_id,
        tier: caller.claims.tier.clone(),
        connected_at: now,
    };
    let candidates = placement::candidates(cfg, caller.tier.limit, &meta, now);
    let tried = candidates.len().min(MAX_ATTEMPTS);
    let mut last: Option<Response> = None;
    for shard in candidates.into_iter().take(MAX_ATTEMPTS) {
        let connect = Connect {
            meta: meta.clone(),
            shard: shard.clone(),
            limit: caller.tier.limit,
        };
        let resp = match try_shard(env, &connect).await {
            Ok(r) => r,
            Err(e) => {
                worker::console_error!("connect to {shard} failed: {e}");
                continue;
            }
        };
        match resp.status_code() {
            // 503: full, draining or no directory: spill to the next candidate.
            503 => last = Some(resp),
            // 101, 429 (tier limit: no other shard may help), 4xx: final.
            _ => return Ok(resp),
        }
    }
    report_unavailable(env, ctx, &meta.user_id);
    match last {
        // With one candidate its own answer (e.g. `shard_full`) is the most precise.
        Some(resp) if tried == 1 => Ok(resp),
        _ => Err(ApiError::new(
            503,
            "no_shard_available",
            "every candidate shard for this user is full or unavailable; retry shortly",
        )
        .retry_after(1)),
    }
}

async fn try_shard(env: &Env, connect: &Connect) -> worker::Result<Response> {
    let stub = runtime::stub(env, placement::SHARD_BINDING, &connect.shard)?;
    let headers = Headers::new();
    headers.set("upgrade", "websocket")?;
    headers.set(SHARD_HEADER, &connect.shard)?;
    headers.set(CONNECT_HEADER, &serde_json::to_string(connect)?)?;
    let req = runtime::internal_request(Method::Get, "/connect", None, headers)?;
    stub.fetch_with_request(req).await
}

/// Counts the refusal in the user's directory, off the response path.
fn report_unavailable(env: &Env, ctx: &Context, user: &str) {
    let env = env.clone();
    let name = placement::directory_name(user);
    ctx.wait_until(async move {
        let Ok(stub) = runtime::stub(&env, placement::DIRECTORY_BINDING, &name) else {
            return;
        };
        let r: worker::Result<serde_json::Value> =
            runtime::call(&stub, "/rejected", None, &Rejection::Unavailable).await;
        if let Err(e) = r {
            worker::console_error!("could not count a rejection: {e}");
        }
    });
}
