//! The stateless gateway Worker: routing, auth, placement and fan-out.

mod admin;
pub(crate) mod caller;
pub(crate) mod policy;
pub(crate) mod report;
mod switch;
mod ticket;
mod upgrade;
pub(crate) mod user_api;

use serde::Serialize;
use worker::{Context, Env, Method, Request, Response};

use crate::config::Config;
use crate::protocol::ApiError;
use crate::runtime::{self, Answer};

pub async fn handle(req: Request, env: Env, ctx: Context) -> worker::Result<Answer> {
    let path = req.path();
    let cfg = runtime::config(&env);
    if path == "/health" {
        return health(&cfg, &env).await.map(Answer::from);
    }
    let cfg = match cfg {
        Ok(c) => c,
        Err(e) => {
            return runtime::error(&ApiError::new(
                503,
                "invalid_config",
                format!("the gateway is misconfigured: {e}"),
            ))
            .map(Answer::from)
        }
    };
    crate::objects::revocations::ensure(&env, &ctx);
    if req.method() == Method::Get && upgrade::is_upgrade_path(&path) {
        // The shard's answer (the 101, or its refusal) goes back untouched; browsers do not
        // subject an upgrade to CORS, so its `Origin` is read only for the gateway's own
        // refusals.
        let e = match upgrade::upgrade(&req, &env, &ctx, &cfg).await {
            Ok(relayed) => return Ok(Answer::Relayed(relayed)),
            Err(e) => e,
        };
        return built(&cfg, origin_of(&req).as_deref(), Err(e));
    }
    let origin = origin_of(&req);
    // Browsers preflight the ticket, stats and broadcast calls (platform-protocol.md §7.5).
    if req.method() == Method::Options {
        let mut resp = Response::empty()?.with_status(204);
        cors(&cfg, origin.as_deref(), true, &mut resp);
        return Ok(Answer::Built(resp));
    }
    let result = route(req, &env, &cfg, &path).await;
    built(&cfg, origin.as_deref(), result)
}

fn origin_of(req: &Request) -> Option<String> {
    req.headers().get("origin").ok().flatten()
}

/// The gateway's own answer (or its error's), with the CORS headers for `origin`.
fn built(
    cfg: &Config,
    origin: Option<&str>,
    result: Result<Response, ApiError>,
) -> worker::Result<Answer> {
    let mut resp = match result {
        Ok(resp) => resp,
        Err(e) => runtime::error(&e)?,
    };
    cors(cfg, origin, false, &mut resp);
    Ok(Answer::Built(resp))
}

/// The endpoint for a request, by method and path.
async fn route(req: Request, env: &Env, cfg: &Config, path: &str) -> Result<Response, ApiError> {
    match (req.method(), path) {
        (Method::Post, "/v1/websocket/ticket") => ticket::issue(&req, env, cfg).await,
        (Method::Post, "/v1/websocket/broadcast") => {
            user_api::broadcast(req, env, cfg).await
        }
        (Method::Get, "/v1/websocket/stats") => user_api::stats(&req, env, cfg).await,
        (Method::Get, "/v1/usage/limits") => user_api::usage_limits(&req, env, cfg).await,
        (Method::Post, "/v1/backend/publish") => user_api::publish(req, env, cfg).await,
        (Method::Get, "/metrics") => admin::metrics(&req, env, cfg).await,
        (Method::Get, "/admin/stats") => admin::stats(&req, env, cfg).await,
        (Method::Get, "/admin/slo") => admin::slo(&req, env, cfg).await,
        (Method::Get, "/admin/revocations") => admin::revocations(&req, env, cfg).await,
        (_, p) if admin::user_tier_path(p).is_some() => admin::user_tier(req, env, cfg).await,
        (_, "/admin/policy") => switch::policy(req, env, cfg).await,
        (_, p) if switch::user_policy_path(p).is_some() => switch::policy(req, env, cfg).await,
        (_, p) if admin::user_disconnect_path(p).is_some() => {
            admin::user_disconnect(req, env, cfg).await
        }
        (Method::Post, "/admin/test/shard") if cfg.test_knobs => {
            admin::test_shard(req, env, cfg).await
        }
        (_, p) if cfg.test_knobs && p.starts_with("/admin/test/registry/") => {
            admin::test_registry(req, env, cfg).await
        }
        (Method::Get, "/admin/test/memory") if cfg.test_knobs => admin::test_memory(&req, cfg),
        (_, p) if cfg.test_knobs && p.starts_with("/admin/test/upstream/") => {
            admin::test_upstream(req, env, cfg).await
        }
        (_, "/v1/updates" | "/v1/websocket" | "/v1/websocket/stats") => {
            Err(method_not_allowed("GET"))
        }
        (_, "/v1/websocket/broadcast" | "/v1/websocket/ticket" | "/v1/backend/publish") => {
            Err(method_not_allowed("POST"))
        }
        (_, "/v1/usage/limits") => Err(method_not_allowed("GET")),
        (_, "/metrics" | "/admin/stats" | "/admin/slo") => Err(method_not_allowed("GET")),
        _ => Err(ApiError::new(
            404,
            "not_found",
            format!(
                "no route {}; see /health, /v1/updates, /v1/websocket/ticket, /v1/websocket/broadcast, /v1/websocket/stats, /v1/usage/limits, /v1/backend/publish, /metrics, /admin/stats, /admin/slo, /admin/users/{{id}}/tier, /admin/users/{{id}}/policy, /admin/users/{{id}}/disconnect, /admin/policy, /admin/revocations",
                crate::protocol::truncate(path, 100)
            ),
        )),
    }
}

/// Adds the CORS headers for `origin` to an answer the gateway built.
fn cors(cfg: &Config, origin: Option<&str>, preflight: bool, resp: &mut Response) {
    for (k, v) in cfg.cors.headers(origin, preflight) {
        if resp.headers_mut().set(k, &v).is_err() {
            return;
        }
    }
}

fn method_not_allowed(allowed: &str) -> ApiError {
    ApiError::new(
        405,
        "method_not_allowed",
        format!("use {allowed} on this path"),
    )
}

async fn health(
    cfg: &Result<std::rc::Rc<Config>, crate::config::ConfigError>,
    env: &Env,
) -> worker::Result<Response> {
    #[derive(Serialize)]
    #[serde(rename_all = "camelCase")]
    struct Ok<'a> {
        status: &'static str,
        /// The policy new sockets follow (`activePolicy`), where it comes from, and
        /// `SHARD_POLICY` as deployed.
        policy: &'a str,
        active_policy: String,
        policy_source: crate::placement::switch::Source,
        policy_version: u64,
        /// Users with a policy of their own (canaries).
        user_policies: usize,
        version: &'static str,
        /// `d1` when tokens are checked against the platform's `RevokedToken` table.
        revocation: &'static str,
        default_tier: &'a str,
    }
    match cfg {
        Result::Ok(c) => {
            let (active_policy, policy_source, policy_version, user_policies) =
                switch::health_policy(env, c).await;
            runtime::json(
                200,
                &Ok {
                    status: "ok",
                    policy: &c.policy_name,
                    active_policy,
                    policy_source,
                    policy_version,
                    user_policies,
                    version: env!("CARGO_PKG_VERSION"),
                    revocation: if caller::revocation_configured(env) {
                        "d1"
                    } else {
                        "off"
                    },
                    default_tier: &c.default_tier,
                },
            )
        }
        Err(e) => runtime::json(
            503,
            &serde_json::json!({
                "status": "error",
                "error": "invalid_config",
                "var": e.var,
                "message": e.to_string(),
                "version": env!("CARGO_PKG_VERSION"),
            }),
        ),
    }
}
