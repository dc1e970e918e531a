//! The hook outbox of a Durable Object (runtime layer; the bookkeeping is the pure
//! `upstream::backlog`). A lifecycle hook is stored before it is sent and deleted after a 2xx
//! answer, so what is kept reaches the upstream at least once without delaying a client.
//!
//! - Bounded per object (`UPSTREAM_HOOKS_MAX`, `UPSTREAM_HOOKS_MAX_BYTES`), with superseded
//!   hooks coalesced away; what is dropped is reported to the owner as [`News`].
//! - Storage is listed once per wake, in pages; after that the in-memory backlog is the index
//!   and an alarm reads only the bodies of the batch it sends.
//! - A flush runs in the background (`state.waitUntil`), [`BATCH`] hooks at a time with its
//!   own budget, never inside the owner's alarm: drain steps, metric reports and presence
//!   retries never wait behind a slow upstream. When it ends it re-arms the owner's alarm.

use std::cell::{Cell, RefCell};
use std::future::Future;
use std::rc::Rc;

use futures::lock::Mutex;
use wasm_bindgen::JsValue;
use worker::{console_error, Env, ListOptions, State, Storage};

use crate::runtime;
use crate::upstream::backlog::{Admitted, Backlog, Bounds, Lost, Settled, BATCH, PER_FLUSH};
use crate::upstream::hooks::{key_of, Hook, KEY_PREFIX};
use crate::upstream::{Failure, UpstreamConfig};
use observability::metrics::UpstreamResult;

/// A flush starts no new batch after this long (a batch can take `UPSTREAM_TIMEOUT_MS` more).
const FLUSH_BUDGET_MS: u64 = 15_000;
/// Keys read per page when the backlog is rebuilt after a wake.
const LIST_PAGE: usize = 128;

/// One attempt, for the owner's metrics.
pub struct Attempt {
    /// The hook's kind (`connected`, `machine-offline`, ...), the metrics label.
    pub kind: String,
    pub result: UpstreamResult,
    pub ms: f64,
}

/// What happened since the owner last looked: attempts made, hooks lost.
#[derive(Default)]
pub struct News {
    pub attempts: Vec<Attempt>,
    pub lost: Vec<Lost>,
}

impl News {
    pub fn is_empty(&self) -> bool {
        self.attempts.is_empty() && self.lost.is_empty()
    }
}

#[derive(Default)]
pub struct Outbox {
    /// `None` until storage was listed since the wake.
    backlog: RefCell<Option<Backlog>>,
    loading: Mutex<()>,
    /// While a flush runs: when the owner's alarm should look again if the object is
    /// evicted before the flush ends.
    flushing_until: Cell<Option<u64>>,
    news: RefCell<News>,
    /// When the oldest unrecorded news appeared.
    news_since: Cell<Option<u64>>,
}

impl Outbox {
    pub fn new() -> Rc<Self> {
        Rc::new(Self::default())
    }

    /// When the owner's alarm should next run for the outbox: news to record, the next due
    /// hook, or the fallback of a running flush. `None` when nothing waits, or when storage
    /// was not listed since the wake (the next alarm, whatever set it, looks).
    pub fn due_at(&self) -> Option<u64> {
        let hooks = match self.flushing_until.get() {
            Some(t) => Some(t),
            None => self.backlog.borrow().as_ref().and_then(Backlog::next_due),
        };
        earliest(self.news_since.get(), hooks)
    }

    /// Whether an alarm at `now_ms` should start a flush.
    pub fn should_flush(&self, now_ms: u64) -> bool {
        if self.flushing_until.get().is_some() {
            return false;
        }
        match self.backlog.borrow().as_ref() {
            None => true,
            Some(b) => b.next_due().is_some_and(|t| t <= now_ms),
        }
    }

    /// Takes what happened since the last call, for the owner's metrics.
    pub fn take_news(&self) -> News {
        self.news_since.set(None);
        std::mem::take(&mut *self.news.borrow_mut())
    }

    fn tell(&self, attempts: Vec<Attempt>, lost: Vec<Lost>) {
        if attempts.is_empty() && lost.is_empty() {
            return;
        }
        let mut n = self.news.borrow_mut();
        n.attempts.extend(attempts);
        n.lost.extend(lost);
        if self.news_since.get().is_none() {
            self.news_since.set(Some(runtime::now_ms()));
        }
    }

    /// Lists the stored hooks once per wake; `false` when storage could not be read.
    async fn ensure_loaded(&self, storage: &Storage) -> bool {
        if self.backlog.borrow().is_some() {
            return true;
        }
        let _guard = self.loading.lock().await;
        if self.backlog.borrow().is_some() {
            return true;
        }
        let mut b = Backlog::default();
        // Pages keep a large outbox from being copied in whole at once.
        let mut start = KEY_PREFIX.to_owned();
        loop {
            let opts = ListOptions::new()
                .prefix(KEY_PREFIX)
                .start(&start)
                .limit(LIST_PAGE);
            let page = match storage.list_with_options(opts).await {
                Ok(m) => m,
                Err(e) => {
                    console_error!("hook outbox unreadable: {e}");
                    return false;
                }
            };
            let mut last = None;
            page.for_each(&mut |value, key| {
                if let Some(text) = value.as_string() {
                    match serde_json::from_str::<Hook>(&text) {
                        Ok(h) => b.restore(&h, text.len()),
                        Err(e) => console_error!("stored hook unreadable: {e}"),
                    }
                }
                last = key.as_string();
            });
            match last {
                // The next key after `k`: `start` is inclusive.
                Some(k) if page.size() as usize >= LIST_PAGE => start = format!("{k}\u{0}"),
                _ => break,
            }
        }
        *self.backlog.borrow_mut() = Some(b);
        true
    }

    /// Whether any hook is still kept (lists storage once after a wake; an unreadable
    /// storage counts as holding some, so nothing is deleted on a guess).
    pub async fn has_pending(&self, storage: &Storage) -> bool {
        if !self.ensure_loaded(storage).await {
            return true;
        }
        self.flushing_until.get().is_some()
            || self
                .backlog
                .borrow()
                .as_ref()
                .is_some_and(|b| !b.is_empty())
    }

    /// Stores new hooks within `bounds`; what they supersede or evict is deleted.
    pub async fn enqueue(&self, storage: &Storage, bounds: Bounds, hooks: &[Hook]) {
        let known = self.ensure_loaded(storage).await;
        for h in hooks {
            let text = h.stored();
            let admitted = match self.backlog.borrow_mut().as_mut() {
                Some(b) if known => b.add(h, text.len(), bounds),
                // Storage could not be listed: keep the hook (at least once) unbounded; the
                // next wake lists it.
                _ => Admitted {
                    store: true,
                    ..Admitted::default()
                },
            };
            self.tell(Vec::new(), admitted.lost);
            // Stored before any other await, so a flush that takes it finds it.
            if admitted.store {
                if let Err(e) = storage.put(&h.key(), text).await {
                    console_error!("hook {} not stored: {e}", h.id);
                }
            }
            delete(storage, &admitted.delete).await;
        }
    }

    /// Starts a flush in the background unless one runs. When it ends, `rearm(at)` is
    /// called with when the owner's alarm should run next, if ever.
    pub fn start_flush<F, Fut>(
        self: &Rc<Self>,
        state: &State,
        env: &Env,
        up: &UpstreamConfig,
        rearm: F,
    ) where
        F: FnOnce(u64) -> Fut + 'static,
        Fut: Future<Output = ()> + 'static,
    {
        if self.flushing_until.get().is_some() {
            return;
        }
        let fallback = runtime::now_ms()
            .saturating_add(FLUSH_BUDGET_MS)
            .saturating_add(u64::from(up.timeout_ms))
            .saturating_add(5_000);
        self.flushing_until.set(Some(fallback));
        let (me, storage, env, up) = (self.clone(), state.storage(), env.clone(), up.clone());
        runtime::object_wait_until(state, async move {
            let read = me.flush(&storage, &env, &up).await;
            me.flushing_until.set(None);
            // Storage unreadable: look again in a while rather than never.
            let at = match read {
                true => me.due_at(),
                false => Some(runtime::now_ms().saturating_add(5_000)),
            };
            if let Some(at) = at {
                rearm(at).await;
            }
        });
    }

    /// Sends due hooks a batch at a time, at most [`PER_FLUSH`], within the budget. A batch
    /// that fails whole pauses the backlog (see `backlog`), which ends the flush.
    async fn flush(&self, storage: &Storage, env: &Env, up: &UpstreamConfig) -> bool {
        if !self.ensure_loaded(storage).await {
            return false;
        }
        let started = runtime::now_ms();
        let mut tried = 0;
        while tried < PER_FLUSH && runtime::now_ms().saturating_sub(started) < FLUSH_BUDGET_MS {
            let now = runtime::now_ms();
            let Some(due) = self
                .backlog
                .borrow_mut()
                .as_mut()
                .map(|b| b.take_due(now, BATCH.min(PER_FLUSH - tried)))
            else {
                return false;
            };
            self.tell(Vec::new(), due.lost);
            delete(storage, &due.expired).await;
            if due.send.is_empty() {
                break;
            }
            tried += due.send.len();
            self.send_batch(storage, env, up, &due.send).await;
        }
        true
    }

    async fn send_batch(&self, storage: &Storage, env: &Env, up: &UpstreamConfig, ids: &[String]) {
        let Some(mut batch) = self.read(storage, ids).await else {
            if let Some(b) = self.backlog.borrow_mut().as_mut() {
                b.release(ids);
            }
            return;
        };
        let posts = batch.iter().map(|h| async move {
            let t0 = runtime::now_ms();
            let r = runtime::upstream_post(env, up, &h.body).await;
            (r, runtime::now_ms().saturating_sub(t0) as f64)
        });
        let answers = futures::future::join_all(posts).await;
        let results: Vec<(String, bool)> = batch
            .iter()
            .zip(&answers)
            .map(|(h, (r, _))| {
                (
                    h.id.clone(),
                    matches!(r, Ok((s, _)) if (200..300).contains(s)),
                )
            })
            .collect();
        let settled = match self.backlog.borrow_mut().as_mut() {
            Some(b) => b.settle(&results, runtime::now_ms()),
            None => Vec::new(),
        };
        let (mut gone, mut lost) = (Vec::new(), Vec::new());
        for ((id, s), h) in settled.into_iter().zip(batch.iter_mut()) {
            match s {
                Settled::Delete => gone.push(id),
                Settled::Expired(l) => {
                    console_error!("hook {id} dropped after a day of failures");
                    gone.push(id);
                    lost.push(l);
                }
                Settled::Retry { attempts, next_ms } => {
                    // Its stored length changes by a digit at most: the byte bound keeps
                    // the length it was admitted with.
                    h.attempts = attempts;
                    h.next_ms = next_ms;
                    if let Err(e) = storage.put(&h.key(), h.stored()).await {
                        console_error!("hook {id} not rescheduled: {e}");
                    }
                }
                Settled::Gone => {}
            }
        }
        delete(storage, &gone).await;
        let attempts = batch
            .iter()
            .zip(answers)
            .map(|(h, (r, ms))| Attempt {
                kind: crate::upstream::backlog::kind(&h.id).to_owned(),
                result: match r {
                    Ok((s, _)) if (200..300).contains(&s) => UpstreamResult::Ok,
                    Err(Failure::Timeout(_)) => UpstreamResult::Timeout,
                    _ => UpstreamResult::Error,
                },
                ms,
            })
            .collect();
        self.tell(attempts, lost);
    }

    /// The stored hooks of `ids`; those no longer stored are forgotten. `None` when storage
    /// could not be read.
    async fn read(&self, storage: &Storage, ids: &[String]) -> Option<Vec<Hook>> {
        let keys: Vec<String> = ids.iter().map(|id| key_of(id)).collect();
        let map = match storage.get_multiple(keys.clone()).await {
            Ok(m) => m,
            Err(e) => {
                console_error!("hooks unreadable: {e}");
                return None;
            }
        };
        let mut found = Vec::with_capacity(ids.len());
        for (id, key) in ids.iter().zip(&keys) {
            let hook = map
                .get(&JsValue::from_str(key))
                .as_string()
                .and_then(|t| serde_json::from_str::<Hook>(&t).ok());
            match hook {
                Some(h) => found.push(h),
                None => {
                    if let Some(b) = self.backlog.borrow_mut().as_mut() {
                        b.forget(id);
                    }
                }
            }
        }
        Some(found)
    }
}

async fn delete(storage: &Storage, ids: &[String]) {
    if ids.is_empty() {
        return;
    }
    // At most 128 keys per call (the storage API's limit); batches and evictions are fewer.
    for chunk in ids.chunks(128) {
        let keys: Vec<String> = chunk.iter().map(|id| key_of(id)).collect();
        if let Err(e) = storage.delete_multiple(keys).await {
            console_error!("hooks not deleted: {e}");
        }
    }
}

/// The earlier of two due times.
pub fn earliest(a: Option<u64>, b: Option<u64>) -> Option<u64> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}
