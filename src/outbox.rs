//! The hook outbox of a Durable Object (runtime layer): a lifecycle hook is stored, then sent
//! by the owner's alarm (set to fire at once) and deleted after a 2xx answer, so it reaches
//! the upstream at least once without ever delaying a client; what fails is retried by the
//! same alarm, with the backoff of `upstream::hooks`.

use worker::{console_error, Env, ListOptions, State};

use crate::metrics::UpstreamResult;
use crate::runtime;
use crate::upstream::hooks::{Hook, KEY_PREFIX};
use crate::upstream::{Failure, UpstreamConfig};

/// What one attempt did, for the owner's metrics and alarm.
pub struct Attempt {
    /// The hook's kind (`connected`, `machine-offline`, ...), the metrics label.
    pub kind: String,
    pub result: UpstreamResult,
    pub ms: f64,
    /// When it is tried again, if it failed and is not given up.
    pub retry_at: Option<u64>,
}

fn kind(h: &Hook) -> String {
    h.id.split(':').next().unwrap_or("hook").to_owned()
}

/// Sends one hook; on failure stores its next attempt, or drops it when it is too old.
async fn attempt(state: &State, env: &Env, up: &UpstreamConfig, mut h: Hook) -> Attempt {
    let started = runtime::now_ms();
    let sent = runtime::upstream_post(env, up, &h.body).await;
    let ms = runtime::now_ms().saturating_sub(started) as f64;
    let (result, retry_at) = match sent {
        Ok((s, _)) if (200..300).contains(&s) => {
            if let Err(e) = state.storage().delete(&h.key()).await {
                console_error!("hook {} sent but not deleted: {e}", h.id);
            }
            (UpstreamResult::Ok, None)
        }
        failed => {
            let result = match failed {
                Err(Failure::Timeout(_)) => UpstreamResult::Timeout,
                _ => UpstreamResult::Error,
            };
            if h.failed(runtime::now_ms()) {
                store(state, &h).await;
                (result, Some(h.next_ms))
            } else {
                console_error!("hook {} dropped after a day of failures", h.id);
                let _ = state.storage().delete(&h.key()).await;
                (result, None)
            }
        }
    };
    Attempt {
        kind: kind(&h),
        result,
        ms,
        retry_at,
    }
}

async fn store(state: &State, h: &Hook) {
    let text = serde_json::to_string(h).unwrap_or_default();
    if let Err(e) = state.storage().put(&h.key(), text).await {
        console_error!("hook {} not stored: {e}", h.id);
    }
}

/// The earlier of two due times.
pub fn earliest(a: Option<u64>, b: Option<u64>) -> Option<u64> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

/// Whether any hook is still stored (one key read).
pub async fn has_pending(state: &State) -> bool {
    match state
        .storage()
        .list_with_options(ListOptions::new().prefix(KEY_PREFIX).limit(1))
        .await
    {
        Ok(map) => map.size() > 0,
        // Unreadable: assume there is, so nothing is deleted on a guess.
        Err(_) => true,
    }
}

/// Stores hooks for the next flush; the caller arms its alarm.
pub async fn enqueue(state: &State, hooks: &[Hook]) {
    for h in hooks {
        store(state, h).await;
    }
}

/// Sends the stored hooks that are due; answers what happened and when the next is due.
pub async fn flush(
    state: &State,
    env: &Env,
    up: &UpstreamConfig,
    now_ms: u64,
) -> (Vec<Attempt>, Option<u64>) {
    let mut due = Vec::new();
    let mut next: Option<u64> = None;
    match state
        .storage()
        .list_with_options(ListOptions::new().prefix(KEY_PREFIX))
        .await
    {
        Ok(map) => map.for_each(&mut |value, _key| {
            let hook = value
                .as_string()
                .and_then(|t| serde_json::from_str::<Hook>(&t).ok());
            if let Some(h) = hook {
                if h.next_ms <= now_ms {
                    due.push(h);
                } else {
                    next = earliest(next, Some(h.next_ms));
                }
            }
        }),
        Err(e) => console_error!("hook outbox unreadable: {e}"),
    }
    let mut out = Vec::with_capacity(due.len());
    for h in due {
        let a = attempt(state, env, up, h).await;
        next = earliest(next, a.retry_at);
        out.push(a);
    }
    (out, next)
}
