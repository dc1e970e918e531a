//! The metrics registry: `REGISTRY_SHARDS` objects (`reg:{k}`), each holding
//! the metrics of the users whose id hashes to it. Users' home shards push their
//! gauges and new observations here every few seconds; `/metrics`,
//! `/admin/stats` and `/admin/slo` fan out over these objects instead of
//! over every user.

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::rc::Rc;

use serde::{Deserialize, Serialize};
use worker::{durable_object, DurableObject, Env, Request, Response, State};

use crate::metrics::{GlobalMetrics, UserMetrics};
use crate::object_api::{Done, Ingest, Message, SnapshotRequest};
use crate::protocol::ApiError;
use crate::runtime;

const KEY: &str = "registry";
/// A user with no open sockets is forgotten after this long without reports.
const FORGET_IDLE_MS: u64 = 3_600_000;

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default)]
struct Saved {
    global: GlobalMetrics,
    last_report_ms: BTreeMap<String, u64>,
}

#[durable_object]
pub struct Registry {
    state: State,
    saved: Rc<RefCell<Saved>>,
}

impl DurableObject for Registry {
    fn new(state: State, _env: Env) -> Self {
        let saved = Rc::new(RefCell::new(Saved::default()));
        let slot = saved.clone();
        let storage = state.storage();
        let _load = state.block_concurrency_while(async move {
            // Unreadable metrics (an older shape) start afresh rather than fail.
            if let Ok(Some(s)) = storage.get::<Saved>(KEY).await {
                *slot.borrow_mut() = s;
            }
            Ok(())
        });
        Self { state, saved }
    }

    async fn fetch(&self, mut req: Request) -> worker::Result<Response> {
        let path = req.path();
        match path.as_str() {
            <Ingest as Message>::PATH => {
                let Ingest(u) = runtime::body_json(&mut req).await?;
                self.ingest(u, runtime::now_ms());
                let snapshot = self.saved.borrow().clone();
                self.state.storage().put(KEY, snapshot).await?;
                runtime::json(200, &Done {})
            }
            <SnapshotRequest as Message>::PATH => {
                let mut g = self.saved.borrow().global.clone();
                let now = runtime::now_ms();
                for u in g.users.values_mut() {
                    u.observed.prune(now);
                }
                runtime::json(200, &g)
            }
            _ => runtime::error(&ApiError::new(404, "not_found", format!("no route {path}"))),
        }
    }

    async fn alarm(&self) -> worker::Result<Response> {
        // The registry arms no alarms; answer one left by an older version.
        Response::ok("")
    }

    runtime::socketless_handlers!();
}

impl Registry {
    /// A directory's push: its shard list replaces the user's (shards that
    /// left are gone), its observations add to what the registry holds.
    fn ingest(&self, u: UserMetrics, now: u64) {
        let mut s = self.saved.borrow_mut();
        let entry = s
            .global
            .users
            .entry(u.user_id.clone())
            .or_insert_with(|| UserMetrics::new(&u.user_id, &u.tier, &u.policy));
        entry.shards = u.shards;
        if !u.tier.is_empty() {
            entry.tier = u.tier;
        }
        if !u.policy.is_empty() {
            entry.policy = u.policy;
        }
        entry.observed.merge(&u.observed);
        entry.observed.prune(now);
        s.last_report_ms.insert(u.user_id, now);
        // Bounded memory: users gone quiet with no sockets are forgotten.
        let stale: Vec<String> = s
            .last_report_ms
            .iter()
            .filter(|(_, at)| now.saturating_sub(**at) > FORGET_IDLE_MS)
            .map(|(id, _)| id.clone())
            .filter(|id| s.global.users.get(id).is_none_or(|m| m.connections() == 0))
            .collect();
        for id in stale {
            s.global.users.remove(&id);
            s.last_report_ms.remove(&id);
        }
    }
}
