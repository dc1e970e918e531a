//! The user's HTTP endpoints: broadcast, backend publish, stats, usage limits. Each is one
//! call to the user's home shard, which knows the user's shards and their last reports:
//! a broadcast pays one hop per shard that may hold a recipient (from the home), never per
//! empty shard; stats are answered from the shards' reports, with no fan-out.
//!
//! Staleness: stats include another shard's sockets as of its last report, which follows a
//! change within 25 ms (presence) to 250 ms (counts) (`objects::shard::reporter`); the
//! home's own are live. A gateway isolate answers a user's stats again from the home's last
//! answer for `STATS_CACHE_MS` (100 ms) after it arrived: a stats poller costs the home at
//! most about ten calls a second per isolate. A broadcast reaches every shard holding slots
//! or reported sockets.

use std::cell::RefCell;
use std::rc::Rc;

use serde::Serialize;
use worker::{Env, Request, Response};

use super::caller;
use crate::auth::cache::{TtlCache, CAPACITY};
use crate::config::Config;
use crate::object_api::{BroadcastRequest, StatsRequest, UsageGet};
use crate::protocol::{self, ApiError};
use crate::runtime;
use crate::runtime::ask_home;

pub async fn broadcast(mut req: Request, env: &Env, cfg: &Config) -> Result<Response, ApiError> {
    let user = caller::http_user(&req, env, cfg).await?;
    let body = read_body(&mut req, cfg.max_message_bytes).await?;
    let delivery = protocol::parse_broadcast_body(&body, runtime::now_ms())?;
    deliver_to_user(env, &user, delivery).await
}

/// `POST /v1/backend/publish` (admin token): the backend delivers to one user's sockets
/// without the user's token, as the platform's REST routes do through its internal
/// broadcast. `{"userId", "message", "filter"?}`; the answer is a broadcast's.
pub async fn publish(mut req: Request, env: &Env, cfg: &Config) -> Result<Response, ApiError> {
    caller::authorize(&req, cfg)?;
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
    crate::protocol::ids::validate_id(&user)
        .map_err(|e| ApiError::bad_request("invalid_id", format!("userId: {e}")))?;
    let rest = serde_json::to_vec(&v).unwrap_or_default();
    let delivery = protocol::parse_broadcast_body(&rest, runtime::now_ms())?;
    deliver_to_user(env, &user, delivery).await
}

/// Reads a body of at most `limit` bytes: 413 by its declared length, or as soon as the
/// chunks read so far pass the limit (a chunked body has no length), before it is read
/// whole. Each chunk's size is checked on the JavaScript side, before it is copied into wasm
/// memory, which never shrinks; a body within its declared length is read in one piece.
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
    if declared.is_some() {
        // A declared length frames the body (the runtime delivers no more than it): read it
        // in one promise instead of chunk by chunk.
        let buf = req.inner().array_buffer().map_err(unreadable)?;
        let buf = worker::wasm_bindgen_futures::JsFuture::from(buf)
            .await
            .map_err(unreadable)?;
        let bytes = js_sys::Uint8Array::new(&buf);
        if bytes.length() as usize > limit {
            return Err(too_large(limit));
        }
        return Ok(bytes.to_vec());
    }
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

/// Delivers to a user's sockets on every shard that may hold a recipient, through its home;
/// answers the home's `BroadcastResult` as it wrote it.
async fn deliver_to_user(
    env: &Env,
    user: &str,
    delivery: protocol::Delivery,
) -> Result<Response, ApiError> {
    let text = runtime::ask_home_text(env, user, &BroadcastRequest(delivery)).await?;
    runtime::json_text(200, &text).map_err(ApiError::internal)
}

/// `GET /v1/usage/limits` (Bearer): the user's stored usage limits verbatim, or the
/// platform's default on no data or any error (never a 500).
pub async fn usage_limits(req: &Request, env: &Env, cfg: &Config) -> Result<Response, ApiError> {
    let user = caller::http_user(req, env, cfg).await?;
    let v = ask_home(env, &user, &UsageGet {})
        .await
        .unwrap_or_else(|_| {
            serde_json::json!({"limitsAvailable": false, "weeklyLimits": [], "lastUpdatedAt": runtime::now_ms()})
        });
    ok_json(&v)
}

thread_local! {
    /// The home's last stats answer per user (JSON text), plain data: a request never waits
    /// on another request's call (workerd ties a call to the request that made it).
    static STATS: RefCell<TtlCache<Rc<String>>> = RefCell::new(TtlCache::new(CAPACITY));
}

/// `GET /v1/websocket/stats`: the user's stats, from its home in one call (or from this
/// isolate's copy of an answer that arrived less than `STATS_CACHE_MS` before).
pub async fn stats(req: &Request, env: &Env, cfg: &Config) -> Result<Response, ApiError> {
    let user = caller::http_user(req, env, cfg).await?;
    let ttl = cfg.stats_cache_ms;
    let cached = STATS.with(|c| c.borrow().get(&user, runtime::now_ms(), ttl));
    let text = match cached {
        Some(t) => t,
        None => {
            // The home's answer is relayed as it is.
            let text = Rc::new(runtime::ask_home_text(env, &user, &StatsRequest {}).await?);
            if ttl > 0 {
                STATS.with(|c| {
                    c.borrow_mut()
                        .insert(&user, runtime::now_ms(), text.clone())
                });
            }
            text
        }
    };
    runtime::json_text(200, &text).map_err(ApiError::internal)
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
    runtime::json(200, v).map_err(ApiError::internal)
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
