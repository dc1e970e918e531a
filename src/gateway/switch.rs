//! The operator's run-time policy switch (docs/policies.md, "Switching at run time"):
//!
//! - `GET /admin/policy`: what is set, and the config's default.
//! - `PUT /admin/policy {"policy":"hash:shards=auto","drainMs":60000}`: everyone's policy.
//! - `DELETE /admin/policy[?drainMs=N]`: back to `SHARD_POLICY`.
//! - `PUT|DELETE /admin/users/{id}/policy`: one user's (a canary), same body.
//!
//! Every gateway isolate follows within `switch::REFRESH_MS`; shards the policy no longer
//! places sockets on drain over `drainMs` (default `switch::DEFAULT_DRAIN_MS`).

use serde::Serialize;
use worker::{Env, Method, Request, Response};

use super::caller::authorize;
use super::policy;
use crate::config::Config;
use crate::object_api::{PolicySet, PolicySetReply, CONTROL_BINDING, CONTROL_NAME};
use crate::placement::switch::{
    PolicyState, Source, Switch, DEFAULT_DRAIN_MS, MAX_DRAIN_MS, MIN_DRAIN_MS, REFRESH_MS,
};
use crate::protocol::ApiError;
use crate::runtime;

/// `/admin/users/{id}/policy` -> the id.
pub fn user_policy_path(path: &str) -> Option<&str> {
    path.strip_prefix("/admin/users/")?.strip_suffix("/policy")
}

/// What the switch endpoints answer.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct View<'a> {
    /// `SHARD_POLICY` as deployed.
    default: &'a str,
    /// The policy new sockets follow (for a user endpoint, that user's) and its source.
    active: String,
    source: Source,
    version: u64,
    global: Option<&'a Switch>,
    /// How many users have a policy of their own (the user endpoint shows theirs).
    user_policies: usize,
    #[serde(skip_serializing_if = "Option::is_none")]
    user: Option<&'a Switch>,
    /// Every gateway isolate follows a change within this bound.
    refresh_ms: u64,
}

fn view<'a>(cfg: &'a Config, st: &'a PolicyState, user: Option<&str>) -> View<'a> {
    let e = st.effective(user.unwrap_or(""), &cfg.policy);
    View {
        default: &cfg.policy_name,
        active: e.policy.to_string(),
        source: e.source,
        version: st.version,
        global: st.global.as_ref(),
        user_policies: st.users.len(),
        user: user.and_then(|u| st.users.get(u)),
        refresh_ms: REFRESH_MS,
    }
}

/// `GET|PUT|DELETE /admin/policy` and `/admin/users/{id}/policy`.
pub async fn policy(mut req: Request, env: &Env, cfg: &Config) -> Result<Response, ApiError> {
    authorize(&req, cfg)?;
    let path = req.path();
    let user = match user_policy_path(&path) {
        Some(u) => {
            crate::protocol::ids::validate_id(u)
                .map_err(|e| ApiError::bad_request("invalid_id", format!("user id: {e}")))?;
            Some(u.to_owned())
        }
        None => None,
    };
    let set = match req.method() {
        Method::Get => {
            let st = policy::state(env).await;
            return runtime::json(200, &view(cfg, &st, user.as_deref()))
                .map_err(ApiError::internal);
        }
        Method::Put => {
            let body = read_body(&mut req).await?;
            let sw = Switch::try_new(&body.policy, body.drain_ms, runtime::now_ms())
                .map_err(|e| ApiError::bad_request("invalid_policy", e.to_string()))?;
            PolicySet {
                user: user.clone(),
                drain_ms: sw.drain_ms,
                switch: Some(sw),
            }
        }
        Method::Delete => PolicySet {
            user: user.clone(),
            switch: None,
            drain_ms: drain_from_query(&req)?,
        },
        _ => {
            return Err(ApiError::new(
                405,
                "method_not_allowed",
                "use GET, PUT or DELETE on this path",
            ))
        }
    };
    let stub = runtime::object(env, CONTROL_BINDING, CONTROL_NAME).map_err(unavailable)?;
    let reply: PolicySetReply = runtime::ask(&stub, None, &set).await.map_err(unavailable)?;
    if let Some(why) = reply.refused {
        return Err(ApiError::new(409, "too_many_user_policies", why));
    }
    // This isolate follows at once; the others within REFRESH_MS.
    policy::remember(reply.state.clone());
    runtime::json(200, &view(cfg, &reply.state, user.as_deref())).map_err(ApiError::internal)
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct Body {
    policy: String,
    drain_ms: Option<u64>,
}

async fn read_body(req: &mut Request) -> Result<Body, ApiError> {
    req.json().await.map_err(|e| {
        ApiError::bad_request(
            "invalid_body",
            format!(
                "expected {{\"policy\": \"<SHARD_POLICY>\", \"drainMs\": <ms, optional>}}: {e}"
            ),
        )
    })
}

/// `?drainMs=N` on a clear; the default window without it.
fn drain_from_query(req: &Request) -> Result<u64, ApiError> {
    let url = req
        .url()
        .map_err(|_| ApiError::bad_request("bad_url", "request URL does not parse"))?;
    let Some((_, v)) = url.query_pairs().find(|(k, _)| k == "drainMs") else {
        return Ok(DEFAULT_DRAIN_MS);
    };
    v.parse::<u64>()
        .ok()
        .filter(|ms| (MIN_DRAIN_MS..=MAX_DRAIN_MS).contains(ms))
        .ok_or_else(|| {
            ApiError::bad_request(
                "invalid_drain",
                format!("drainMs must be an integer within {MIN_DRAIN_MS}..={MAX_DRAIN_MS}"),
            )
        })
}

fn unavailable(e: worker::Error) -> ApiError {
    worker::console_error!("policy control failed: {e}");
    ApiError::new(
        503,
        "control_unavailable",
        "the policy control could not be reached; retry",
    )
    .retry_after(1)
}

/// The active policy for `/health`: the run-time one if set.
pub async fn health_policy(env: &Env, cfg: &Config) -> (String, Source, u64, usize) {
    let st = policy::state(env).await;
    let e = st.effective("", &cfg.policy);
    let active = match e.source {
        Source::Config => cfg.policy_name.clone(),
        _ => e.policy.to_string(),
    };
    (active, e.source, st.version, st.users.len())
}
