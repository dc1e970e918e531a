//! What this isolate knows of the shard policies set at run time: the `control` object's
//! state, read again once it is older than `switch::REFRESH_MS`, so every isolate follows a
//! switch within that bound. A failed read keeps the last state (or the config's policy
//! alone) and is retried on the next request.

use std::cell::RefCell;

use worker::Env;

use crate::config::Config;
use crate::object_api::{PolicyGet, CONTROL_BINDING, CONTROL_NAME};
use crate::placement::switch::{Effective, PolicyState, REFRESH_MS};
use crate::runtime;

thread_local! {
    /// The state and when it was read.
    static CONTROL: RefCell<Option<(PolicyState, u64)>> = const { RefCell::new(None) };
}

/// The run-time policies, read from the control when this isolate's copy is stale.
pub async fn state(env: &Env) -> PolicyState {
    let now = runtime::now_ms();
    let cached = CONTROL.with(|c| c.borrow().clone());
    if let Some((s, at)) = &cached {
        if now.saturating_sub(*at) < REFRESH_MS {
            return s.clone();
        }
    }
    match read(env).await {
        Ok(s) => {
            remember(s.clone());
            s
        }
        Err(e) => {
            worker::console_error!("could not read the policy control: {e}");
            let s = cached.map(|(s, _)| s).unwrap_or_default();
            // Retried at the next request, not on every one while the control is down.
            CONTROL.with(|c| *c.borrow_mut() = Some((s.clone(), now)));
            s
        }
    }
}

/// The policy `user`'s new sockets follow.
pub async fn effective(env: &Env, cfg: &Config, user: &str) -> Effective {
    state(env).await.effective(user, &cfg.policy)
}

/// Keeps a state this isolate just wrote (an operator's switch through it applies here at
/// once).
pub fn remember(s: PolicyState) {
    CONTROL.with(|c| *c.borrow_mut() = Some((s, runtime::now_ms())));
}

async fn read(env: &Env) -> worker::Result<PolicyState> {
    let stub = runtime::object(env, CONTROL_BINDING, CONTROL_NAME)?;
    runtime::ask(&stub, None, &PolicyGet {}).await
}
