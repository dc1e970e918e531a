//! The metrics registry: `REGISTRY_SHARDS` objects (`reg:{k}`), each holding
//! the metrics of the users whose id hashes to it. Users' home shards push their
//! gauges and new observations here every few seconds; `/metrics`,
//! `/admin/stats` and `/admin/slo` fan out over these objects instead of
//! over every user.
//!
//! Each user is one storage value (`u:{user}`, see `book`): a push reads and
//! writes that user only, and is applied once however often it is retried. A
//! sweep alarm forgets quiet users without sockets.

use std::cell::{Cell, RefCell};
use std::collections::BTreeMap;
use std::rc::Rc;

use serde::{Deserialize, Serialize};
use worker::{
    console_error, durable_object, DurableObject, Env, ListOptions, Request, Response, State,
    Storage,
};

use crate::object_api::{
    Done, Ingest as IngestPush, Ingested, Message, NoticeUsers, RegistryStorage, SnapshotRequest,
};
use crate::protocol::ApiError;
use crate::runtime::{self, Call, Reply};
use observability::metrics::GlobalMetrics;
use observability::registry::{self, Ingest, Push, UserRecord, LEGACY_KEY, USER_PREFIX};

/// How often quiet users are looked for while the registry has users.
const SWEEP_EVERY_MS: u64 = 600_000;
/// Records read per page when loading.
const LIST_PAGE: usize = 256;
/// The last global policy switch (`NoticeUsers`), outside the users' prefix.
const NOTICE_KEY: &str = "policy-notice";

/// The layout before one value per user, read once to split it.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default)]
struct Legacy {
    global: GlobalMetrics,
    last_report_ms: BTreeMap<String, u64>,
}

#[durable_object]
pub struct Registry {
    state: State,
    env: Env,
    users: Rc<RefCell<BTreeMap<String, UserRecord>>>,
    /// The sweep alarm is set (unknown after a wake: the first push sets it).
    sweep_armed: Cell<bool>,
    /// The last global switch told here: answered to every push (version-ordered at the
    /// home), so a user this registry did not list when it came still learns it.
    notice: Rc<RefCell<Option<NoticeUsers>>>,
}

impl DurableObject for Registry {
    fn new(state: State, env: Env) -> Self {
        let users = Rc::new(RefCell::new(BTreeMap::new()));
        let notice = Rc::new(RefCell::new(None));
        let (slot, notice_slot) = (users.clone(), notice.clone());
        let storage = state.storage();
        let _load = state.block_concurrency_while(async move {
            split_legacy(&storage).await;
            *slot.borrow_mut() = load(&storage).await;
            *notice_slot.borrow_mut() = storage.get::<NoticeUsers>(NOTICE_KEY).await.ok().flatten();
            Ok(())
        });
        Self {
            state,
            env,
            users,
            sweep_armed: Cell::new(false),
            notice,
        }
    }

    async fn fetch(&self, req: Request) -> worker::Result<Response> {
        self.on_call(Call::read(req).await?).await?.into_response()
    }

    async fn alarm(&self) -> worker::Result<Response> {
        self.sweep().await
    }

    runtime::socketless_handlers!();
}

/// Homes told of a policy switch at once, per registry.
const NOTICE_CONCURRENCY: usize = 16;
/// How long a registry waits for each home it tells.
const NOTICE_TIMEOUT_MS: u32 = 5_000;

runtime::rpc_object!(Registry);

impl Registry {
    /// Tells the home of every user here with open sockets (but `except`) of a policy
    /// switch, in the background, `NOTICE_CONCURRENCY` at a time.
    fn notice_users(&self, n: NoticeUsers) {
        let users: Vec<String> = self
            .users
            .borrow()
            .iter()
            .filter(|(id, r)| r.metrics.connections() > 0 && !n.except.contains(id))
            .map(|(id, _)| id.clone())
            .collect();
        let env = self.env.clone();
        runtime::object_wait_until(&self.state, async move {
            let mut failed = 0usize;
            for chunk in users.chunks(NOTICE_CONCURRENCY) {
                let calls = chunk.iter().map(|user| {
                    let (env, notice) = (&env, &n.notice);
                    async move {
                        runtime::timeout(NOTICE_TIMEOUT_MS, runtime::ask_home(env, user, notice))
                            .await
                            .is_some_and(|r| r.is_ok())
                    }
                });
                failed += futures::future::join_all(calls)
                    .await
                    .iter()
                    .filter(|ok| !**ok)
                    .count();
            }
            if failed > 0 {
                console_error!("policy notice: {failed} of {} homes failed", users.len());
            }
        });
    }

    async fn sweep(&self) -> worker::Result<Response> {
        let now = runtime::now_ms();
        let stale: Vec<String> = self
            .users
            .borrow()
            .iter()
            .filter(|(_, r)| registry::is_stale(r, now))
            .map(|(id, _)| id.clone())
            .collect();
        for chunk in stale.chunks(128) {
            let keys: Vec<String> = chunk.iter().map(|id| registry::key(id)).collect();
            self.state.storage().delete_multiple(keys).await?;
            let mut users = self.users.borrow_mut();
            for id in chunk {
                users.remove(id);
            }
        }
        self.sweep_armed.set(false);
        if !self.users.borrow().is_empty() {
            self.arm_sweep(now).await?;
        }
        Response::ok("")
    }

    async fn on_call(&self, call: Call) -> worker::Result<Reply> {
        match call.path.as_str() {
            <IngestPush as Message>::PATH => {
                let IngestPush(push) = call.message()?;
                self.ingest(push).await
            }
            <SnapshotRequest as Message>::PATH => Reply::json(&self.snapshot()),
            <NoticeUsers as Message>::PATH => {
                let n: NoticeUsers = call.message()?;
                self.keep_notice(&n).await?;
                self.notice_users(n);
                Reply::json(&Done {})
            }
            <RegistryStorage as Message>::PATH
                if runtime::config(&self.env).is_ok_and(|c| c.test_knobs) =>
            {
                Reply::json(&storage_shape(&self.state.storage()).await?)
            }
            p => Ok(Reply::no_route(p.to_owned())),
        }
    }

    /// A home's push: the user's record, updated, is stored before it is kept, so a
    /// failed write changes nothing and its retry applies once.
    async fn ingest(&self, push: Push) -> worker::Result<Reply> {
        let user = push.metrics.user_id.clone();
        if user.is_empty() {
            return Ok(Reply::error(&ApiError::bad_request(
                "invalid_body",
                "no userId",
            )));
        }
        let now = runtime::now_ms();
        let have = self.users.borrow().get(&user).cloned();
        let policy = self
            .notice
            .borrow()
            .as_ref()
            .filter(|n| !n.except.contains(&user))
            .map(|n| n.notice.clone());
        match registry::ingest(have.as_ref(), push, now) {
            Ingest::Duplicate => Reply::json(&Ingested {
                duplicate: true,
                policy,
            }),
            Ingest::Apply(rec) => {
                let text = serde_json::to_string(&rec)?;
                self.state
                    .storage()
                    .put(&registry::key(&user), text)
                    .await?;
                self.users.borrow_mut().insert(user, *rec);
                if !self.sweep_armed.get() {
                    self.arm_sweep(now).await?;
                }
                Reply::json(&Ingested {
                    duplicate: false,
                    policy,
                })
            }
        }
    }

    /// Keeps the newest global switch, stored first so a restart answers it too.
    async fn keep_notice(&self, n: &NoticeUsers) -> worker::Result<()> {
        let newer = self
            .notice
            .borrow()
            .as_ref()
            .is_none_or(|have| n.notice.version > have.notice.version);
        if newer {
            self.state.storage().put(NOTICE_KEY, n).await?;
            *self.notice.borrow_mut() = Some(n.clone());
        }
        Ok(())
    }

    async fn arm_sweep(&self, now: u64) -> worker::Result<()> {
        self.sweep_armed.set(true);
        self.state
            .storage()
            .set_alarm(runtime::scheduled(now.saturating_add(SWEEP_EVERY_MS)))
            .await
    }

    /// Every user's metrics, windows pruned to now.
    fn snapshot(&self) -> GlobalMetrics {
        let now = runtime::now_ms();
        let mut g = GlobalMetrics::default();
        for (id, r) in self.users.borrow().iter() {
            let mut m = r.metrics.clone();
            m.observed.prune(now);
            g.users.insert(id.clone(), m);
        }
        g
    }
}

/// Every user record, read in pages. An unreadable one (an older shape) is skipped: it
/// starts afresh with the user's next push.
async fn load(storage: &Storage) -> BTreeMap<String, UserRecord> {
    let mut users = BTreeMap::new();
    let mut start = USER_PREFIX.to_owned();
    loop {
        let opts = ListOptions::new()
            .prefix(USER_PREFIX)
            .start(&start)
            .limit(LIST_PAGE);
        let page = match storage.list_with_options(opts).await {
            Ok(m) => m,
            Err(e) => {
                console_error!("registry unreadable: {e}");
                break;
            }
        };
        let mut last = None;
        page.for_each(&mut |value, key| {
            if let Some(rec) = value
                .as_string()
                .and_then(|t| serde_json::from_str::<UserRecord>(&t).ok())
            {
                users.insert(rec.metrics.user_id.clone(), rec);
            }
            last = key.as_string();
        });
        match last {
            Some(k) if page.size() as usize >= LIST_PAGE => start = format!("{k}\u{0}"),
            _ => break,
        }
    }
    users
}

/// Splits the one value of the older layout into one value per user, then deletes it.
async fn split_legacy(storage: &Storage) {
    let Ok(Some(old)) = storage.get::<Legacy>(LEGACY_KEY).await else {
        return;
    };
    for (id, m) in old.global.users {
        let rec = UserRecord {
            last_report_ms: old.last_report_ms.get(&id).copied().unwrap_or(0),
            metrics: m,
            applied: None,
        };
        let Ok(text) = serde_json::to_string(&rec) else {
            continue;
        };
        if let Err(e) = storage.put(&registry::key(&id), text).await {
            // Keep the old value: the split is tried again on the next start.
            console_error!("registry split failed: {e}");
            return;
        }
    }
    if let Err(e) = storage.delete(LEGACY_KEY).await {
        console_error!("registry's old value not deleted: {e}");
    }
}

/// What storage holds, for tests (`TEST_KNOBS=on`): keys, and the largest value's size.
async fn storage_shape(storage: &Storage) -> worker::Result<serde_json::Value> {
    let map = storage.list().await?;
    let (mut keys, mut users, mut largest, mut total, mut legacy) =
        (0u64, 0u64, 0usize, 0usize, false);
    map.for_each(&mut |value, key| {
        let k = key.as_string().unwrap_or_default();
        let len = value.as_string().map_or_else(
            || {
                js_sys::JSON::stringify(&value)
                    .ok()
                    .and_then(|s| s.as_string())
                    .map_or(0, |s| s.len())
            },
            |s| s.len(),
        );
        keys += 1;
        users += u64::from(k.starts_with(USER_PREFIX));
        legacy |= k == LEGACY_KEY;
        largest = largest.max(len);
        total += len;
    });
    Ok(serde_json::json!({
        "keys": keys,
        "userKeys": users,
        "legacy": legacy,
        "largestValueBytes": largest,
        "totalValueBytes": total,
    }))
}
