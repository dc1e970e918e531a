//! What the gateway saw for a user (connect refusals it decided, broadcast and stats
//! latencies), told to the user's home after the answer, batched per isolate.

use worker::{Context, Env};

use crate::runtime;

/// How long a gateway isolate gathers what it saw before telling the users' homes:
/// one call per user per second instead of one per request (a stats poller or a broadcast
/// storm costs a call to the home per request otherwise).
const OBSERVE_BATCH_MS: u32 = 1_000;

thread_local! {
    static OBSERVED: std::cell::RefCell<std::collections::BTreeMap<String, crate::object_api::Observed>> =
        const { std::cell::RefCell::new(std::collections::BTreeMap::new()) };
    static FLUSH_SCHEDULED: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Records what the gateway saw for a user (connect outcomes it decided, broadcast and
/// stats latencies); sent to the user's home with the next batch, after the answer
/// (metrics never delay a client).
pub fn observe_later(env: &Env, ctx: &Context, user: &str, o: crate::object_api::Observed) {
    // Outcomes (refusals the gateway decided) are rare and counted at once; latencies, one
    // per stats or broadcast call, are gathered.
    if !o.outcomes.is_empty() {
        let (env, user) = (env.clone(), user.to_owned());
        runtime::wait_until(ctx, async move { send_observed(&env, &user, &o).await });
        return;
    }
    OBSERVED.with(|b| {
        let mut b = b.borrow_mut();
        let e = b.entry(user.to_owned()).or_default();
        e.tier = o.tier;
        e.outcomes.extend(o.outcomes);
        e.latencies.extend(o.latencies);
    });
    if FLUSH_SCHEDULED.with(|f| f.replace(true)) {
        return;
    }
    let env = env.clone();
    runtime::wait_until(ctx, async move {
        runtime::sleep(OBSERVE_BATCH_MS).await;
        FLUSH_SCHEDULED.with(|f| f.set(false));
        let batch = OBSERVED.with(|b| std::mem::take(&mut *b.borrow_mut()));
        let calls = batch.iter().map(|(user, o)| send_observed(&env, user, o));
        futures::future::join_all(calls).await;
    });
}

async fn send_observed(env: &Env, user: &str, o: &crate::object_api::Observed) {
    if let Err(e) = crate::runtime::ask_home(env, user, o).await {
        worker::console_error!("could not record observations: {}", e.message);
    }
}
