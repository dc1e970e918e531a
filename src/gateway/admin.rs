//! Admin endpoints: bearer `ADMIN_TOKEN`, compared in constant time. User
//! tokens never pass, whatever they claim.

use worker::{Env, Headers, Method, Request, Response};

use super::caller::{self, authorize};
use crate::config::Config;
use crate::object_api::{
    Disconnect, DisconnectUser, FeedStatus, Knob, SetTier, SnapshotRequest, TierGet, TierInfo,
};
use crate::placement;
use crate::protocol::ApiError;
use crate::runtime;
use crate::runtime::ask_home;
use observability::exposition::{self, ExpositionOptions};
use observability::metrics::GlobalMetrics;
use observability::slo;

/// The user id of `/admin/users/{id}/tier`.
pub fn user_tier_path(path: &str) -> Option<&str> {
    path.strip_prefix("/admin/users/")?.strip_suffix("/tier")
}

/// `GET|PUT|DELETE /admin/users/{id}/tier`: the operator's per-user tier. `PUT
/// {"tier":"enterprise"}` sets it, `DELETE` goes back to `DEFAULT_TIER`; both answer what
/// the user resolves to now. Kept by the user's home shard, the authority for the limit, so
/// the next connect is admitted under it with no redeploy.
pub async fn user_tier(mut req: Request, env: &Env, cfg: &Config) -> Result<Response, ApiError> {
    authorize(&req, cfg)?;
    let path = req.path();
    let user = user_tier_path(&path).unwrap_or_default().to_owned();
    crate::protocol::ids::validate_id(&user)
        .map_err(|e| ApiError::bad_request("invalid_id", format!("user id: {e}")))?;
    let info: TierInfo = match req.method() {
        Method::Get => ask_home(env, &user, &TierGet {}).await?,
        Method::Put => {
            #[derive(serde::Deserialize)]
            #[serde(deny_unknown_fields)]
            struct Body {
                tier: String,
            }
            let body: Body = req.json().await.map_err(|e| {
                ApiError::bad_request(
                    "invalid_body",
                    format!("expected {{\"tier\": \"<name>\"}}: {e}"),
                )
            })?;
            if cfg.tier(&body.tier).is_none() {
                return Err(ApiError::bad_request(
                    "unknown_tier",
                    format!(
                        "tier `{}` is not configured; configured tiers: {}",
                        crate::protocol::truncate(&body.tier, 64),
                        cfg.tier_names()
                    ),
                ));
            }
            let set = SetTier {
                tier: Some(body.tier),
            };
            ask_home(env, &user, &set).await?
        }
        Method::Delete => ask_home(env, &user, &SetTier { tier: None }).await?,
        _ => {
            return Err(ApiError::new(
                405,
                "method_not_allowed",
                "use GET, PUT or DELETE on this path",
            ))
        }
    };
    caller::forget_placement(&user);
    runtime::json(
        200,
        &serde_json::json!({"user": user, "tier": info.tier, "limit": info.limit, "override": info.overridden}),
    )
    .map_err(ApiError::internal)
}

/// The user id of `/admin/users/{id}/disconnect`.
pub fn user_disconnect_path(path: &str) -> Option<&str> {
    path.strip_prefix("/admin/users/")?
        .strip_suffix("/disconnect")
}

/// `POST /admin/users/{id}/disconnect`: ends at once, across every shard of the user, all of
/// the user's sockets, or those of one token (`{"tokenHash": "<hex sha256>"}`, the
/// platform's `RevokedToken.tokenHash`), one session (`{"sessionId"}`) or one machine
/// (`{"machineId"}`). Each socket gets the platform's `auth-error` frame and close 4001, on
/// which its client reconnects (and, with a revoked token, fails with 401). With a
/// `tokenHash` the reason is `revoked` unless `"reason": "disconnected"` is given. The
/// platform's backend calls this when it revokes a token.
pub async fn user_disconnect(
    mut req: Request,
    env: &Env,
    cfg: &Config,
) -> Result<Response, ApiError> {
    authorize(&req, cfg)?;
    if req.method() != Method::Post {
        return Err(ApiError::new(
            405,
            "method_not_allowed",
            "use POST on this path",
        ));
    }
    let path = req.path();
    let user = user_disconnect_path(&path).unwrap_or_default().to_owned();
    crate::protocol::ids::validate_id(&user)
        .map_err(|e| ApiError::bad_request("invalid_id", format!("user id: {e}")))?;
    let text = req
        .text()
        .await
        .map_err(|_| ApiError::bad_request("bad_body", "could not read the request body"))?;
    let mut d: Disconnect = if text.trim().is_empty() {
        Disconnect::default()
    } else {
        serde_json::from_str(&text).map_err(|e| {
            ApiError::bad_request(
                "invalid_body",
                format!("expected {{}} or one of {{\"tokenHash\"}}, {{\"sessionId\"}}, {{\"machineId\"}} (and optionally \"reason\"): {e}"),
            )
        })?
    };
    d.tag()
        .map_err(|e| ApiError::bad_request("invalid_body", e))?;
    if let Some(h) = &d.token_hash {
        if h.len() != 64 || !h.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(ApiError::bad_request(
                "invalid_token_hash",
                "`tokenHash` is the token's SHA-256 as 64 hex digits (RevokedToken.tokenHash)",
            ));
        }
        let lower = h.to_ascii_lowercase();
        caller::forget_token_hash(&lower);
        d.token_hash = Some(lower);
        d.reason
            .get_or_insert(crate::protocol::CredentialEnd::Revoked);
    }
    for id in [&d.session_id, &d.machine_id].into_iter().flatten() {
        crate::protocol::ids::validate_id(id)
            .map_err(|e| ApiError::bad_request("invalid_id", format!("{e}")))?;
    }
    let r = ask_home(env, &user, &DisconnectUser(d)).await?;
    runtime::json(200, &r).map_err(ApiError::internal)
}

/// `GET /admin/revocations`: the revocation feed's state (watermark, revocations read,
/// sockets ended, dispatches pending, shed and failed, the last poll and its error).
pub async fn revocations(req: &Request, env: &Env, cfg: &Config) -> Result<Response, ApiError> {
    authorize(req, cfg)?;
    let unavailable = |e: worker::Error| ApiError::new(503, "feed_unavailable", e.to_string());
    let stub = runtime::object(
        env,
        crate::object_api::REVOCATIONS_BINDING,
        crate::object_api::REVOCATIONS_NAME,
    )
    .map_err(unavailable)?;
    let v = runtime::ask(&stub, None, &FeedStatus {})
        .await
        .map_err(unavailable)?;
    runtime::json(200, &v).map_err(ApiError::internal)
}

/// `POST /admin/test/shard {"shard": name, "latencyMs": n, "fault": "error"|"hang"|null}`:
/// sets a shard's test injection. Exists only while `TEST_KNOBS=on`.
pub async fn test_shard(mut req: Request, env: &Env, cfg: &Config) -> Result<Response, ApiError> {
    authorize(&req, cfg)?;
    #[derive(serde::Deserialize)]
    #[serde(rename_all = "camelCase", deny_unknown_fields)]
    struct Body {
        shard: String,
        #[serde(default)]
        latency_ms: u32,
        #[serde(default)]
        fault: Option<crate::object_api::Fault>,
    }
    let body: Body = req.json().await.map_err(|e| {
        ApiError::bad_request(
            "invalid_body",
            format!(
                "expected {{\"shard\", \"latencyMs\"?, \"fault\"?: \"error\"|\"hang\"|null}}: {e}"
            ),
        )
    })?;
    if shard_policies::parse_object_name(&body.shard).is_none() {
        return Err(ApiError::bad_request(
            "invalid_shard",
            "`shard` must be a shard object name such as cm:alice:h0",
        ));
    }
    let internal = |e: worker::Error| ApiError::new(502, "shard_unavailable", e.to_string());
    let stub =
        runtime::object(env, crate::object_api::SHARD_BINDING, &body.shard).map_err(internal)?;
    let knob = Knob {
        latency_ms: body.latency_ms,
        fault: body.fault,
    };
    let set = runtime::ask(&stub, Some(&body.shard), &knob)
        .await
        .map_err(internal)?;
    runtime::json(200, &serde_json::json!({"shard": body.shard, "knob": set}))
        .map_err(ApiError::internal)
}

/// `/admin/test/upstream/{path}`: relays to the upstream service binding's `/{path}` (the
/// reference upstream's test controls, which a second Worker in the same `wrangler dev` only
/// exposes through the binding). Exists only while `TEST_KNOBS=on`.
pub async fn test_upstream(
    mut req: Request,
    env: &Env,
    cfg: &Config,
) -> Result<Response, ApiError> {
    authorize(&req, cfg)?;
    let url = req
        .url()
        .map_err(|_| ApiError::bad_request("bad_url", "request URL does not parse"))?;
    let rest = url
        .path()
        .strip_prefix("/admin/test/upstream")
        .unwrap_or_default();
    let query = url.query().map(|q| format!("?{q}")).unwrap_or_default();
    let body = req.text().await.unwrap_or_default();
    let relay = async {
        let headers = Headers::new();
        headers.set("content-type", "application/json")?;
        let mut init = worker::RequestInit::new();
        init.with_method(req.method()).with_headers(headers);
        if !body.is_empty() {
            init.with_body(Some(body.into()));
        }
        let r = Request::new_with_init(&format!("https://upstream{rest}{query}"), &init)?;
        let mut resp = env
            .service(crate::upstream::BINDING)?
            .fetch_request(r)
            .await?;
        let text = resp.text().await?;
        Ok::<_, worker::Error>((resp.status_code(), text))
    };
    let (status, text) = relay
        .await
        .map_err(|e| ApiError::new(502, "upstream_unavailable", e.to_string()))?;
    let headers = Headers::new();
    headers
        .set("content-type", "application/json")
        .map_err(ApiError::internal)?;
    Ok(Response::ok(text)
        .map_err(ApiError::internal)?
        .with_status(status)
        .with_headers(headers))
}

/// `POST /admin/test/registry/ingest {"pushes": [...]}`: relays each push to its user's
/// registry object as a home would (16 at a time); `GET /admin/test/registry/storage`:
/// each registry object's storage shape. Exist only while `TEST_KNOBS=on`.
pub async fn test_registry(
    mut req: Request,
    env: &Env,
    cfg: &Config,
) -> Result<Response, ApiError> {
    authorize(&req, cfg)?;
    let internal = |e: worker::Error| ApiError::new(502, "registry_unavailable", e.to_string());
    let answer = match (req.method(), req.path().as_str()) {
        (Method::Post, "/admin/test/registry/ingest") => {
            #[derive(serde::Deserialize)]
            struct Body {
                pushes: Vec<serde_json::Value>,
            }
            let body: Body = req.json().await.map_err(|e| {
                ApiError::bad_request(
                    "invalid_body",
                    format!("expected {{\"pushes\": [..]}}: {e}"),
                )
            })?;
            let (mut ok, mut duplicates, mut failed) = (0u64, 0u64, Vec::new());
            for chunk in body.pushes.chunks(16) {
                let calls = chunk.iter().map(|p| async move {
                    let push: observability::registry::Push = serde_json::from_value(p.clone())?;
                    let name = placement::registry_name(&push.metrics.user_id, cfg.registry_shards);
                    let stub = runtime::object(env, crate::object_api::REGISTRY_BINDING, &name)?;
                    runtime::ask(&stub, None, &crate::object_api::Ingest(push)).await
                });
                for r in futures::future::join_all(calls).await {
                    match r {
                        Ok(v) if v.duplicate => duplicates += 1,
                        Ok(_) => ok += 1,
                        Err(e) => failed.push(e.to_string()),
                    }
                }
            }
            serde_json::json!({"ok": ok, "duplicates": duplicates, "failed": failed})
        }
        (Method::Get, "/admin/test/registry/storage") => {
            let mut shapes = Vec::new();
            for name in placement::registry_names(cfg.registry_shards) {
                let stub = runtime::object(env, crate::object_api::REGISTRY_BINDING, &name)
                    .map_err(internal)?;
                let shape = runtime::ask(&stub, None, &crate::object_api::RegistryStorage {})
                    .await
                    .map_err(internal)?;
                shapes.push(serde_json::json!({"name": name, "storage": shape}));
            }
            serde_json::json!({"registries": shapes})
        }
        (_, p) => {
            return Err(ApiError::new(404, "not_found", format!("no route {p}")));
        }
    };
    runtime::json(200, &answer).map_err(ApiError::internal)
}

/// `GET /admin/test/memory`: the size of this isolate's wasm memory, which never shrinks
/// (the gateway and every object of the isolate share it). Exists only while `TEST_KNOBS=on`.
pub fn test_memory(req: &Request, cfg: &Config) -> Result<Response, ApiError> {
    use wasm_bindgen::JsCast;
    authorize(req, cfg)?;
    let memory: js_sys::WebAssembly::Memory = wasm_bindgen::memory().unchecked_into();
    let bytes = memory
        .buffer()
        .unchecked_into::<js_sys::ArrayBuffer>()
        .byte_length();
    runtime::json(200, &serde_json::json!({"wasmBytes": bytes})).map_err(ApiError::internal)
}

/// Every registry object's snapshot, merged: the global view. A registry
/// that does not answer is left out (the view under-counts; it never fails).
async fn global(env: &Env, cfg: &Config) -> GlobalMetrics {
    let names = placement::registry_names(cfg.registry_shards);
    let calls = names.iter().map(|name| async move {
        let stub = runtime::object(env, crate::object_api::REGISTRY_BINDING, name).ok()?;
        let r = runtime::timeout(
            cfg.fanout_timeout_ms,
            runtime::ask(&stub, None, &SnapshotRequest {}),
        )
        .await;
        match r {
            Some(Ok(g)) => Some(g),
            _ => {
                worker::console_error!("registry {name} did not answer");
                None
            }
        }
    });
    let mut all = GlobalMetrics::default();
    for g in futures::future::join_all(calls).await.into_iter().flatten() {
        all.merge(&g);
    }
    all
}

/// `GET /metrics`: Prometheus text exposition.
pub async fn metrics(req: &Request, env: &Env, cfg: &Config) -> Result<Response, ApiError> {
    authorize(req, cfg)?;
    let g = global(env, cfg).await;
    let opts = ExpositionOptions {
        max_users: cfg.metrics_max_user_series as usize,
        ..ExpositionOptions::default()
    };
    let mut body = exposition::render(&g, &cfg.tiers, &opts);
    let st = super::policy::state(env).await;
    let draining = g
        .users
        .values()
        .flat_map(|u| u.shards.iter())
        .filter(|s| s.draining)
        .count() as u64;
    body.push_str(&crate::placement::switch::exposition(
        &cfg.policy_name,
        &st.effective("", &cfg.policy),
        st.users.len(),
        draining,
    ));
    let headers = Headers::new();
    headers
        .set("content-type", exposition::CONTENT_TYPE)
        .map_err(ApiError::internal)?;
    Ok(Response::ok(body)
        .map_err(ApiError::internal)?
        .with_headers(headers))
}

/// `GET /admin/stats`: global totals and the top users by connections.
pub async fn stats(req: &Request, env: &Env, cfg: &Config) -> Result<Response, ApiError> {
    authorize(req, cfg)?;
    let g = global(env, cfg).await;
    let top = query_usize(req, "top").unwrap_or(20).clamp(1, 1000);
    runtime::json(
        200,
        &slo::admin_stats(&g, &cfg.tiers, runtime::now_ms(), top),
    )
    .map_err(ApiError::internal)
}

/// `GET /admin/slo`: the per-tier SLO report.
pub async fn slo(req: &Request, env: &Env, cfg: &Config) -> Result<Response, ApiError> {
    authorize(req, cfg)?;
    let g = global(env, cfg).await;
    runtime::json(200, &slo::slo_report(&g, &cfg.tiers, runtime::now_ms()))
        .map_err(ApiError::internal)
}

fn query_usize(req: &Request, key: &str) -> Option<usize> {
    req.url()
        .ok()?
        .query_pairs()
        .find(|(k, _)| k == key)
        .and_then(|(_, v)| v.parse().ok())
}
