//! The shard's socket index and what it tells the directory about it.
//!
//! Presence (which sessions and machines are here, whether any user-scoped socket is) is
//! reported whenever it changes: before the 101 of a connect that changes it, so a socket is
//! registered by the time its client can send, and after a close. One report is in flight at
//! a time; connects that change presence meanwhile wait for the next one, which carries all
//! their changes (absolute state, so a repeated report is harmless). A failed report is
//! retried by the alarm; the directory's reconcile pass corrects whatever is still wrong.

use std::rc::Rc;

use worker::console_error;

use super::{attachment, ConnectionManager};
use crate::placement;
use crate::protocol::SocketMeta;
use crate::routing::index::{Change, SocketIndex};
use crate::routing::view::{PresenceReport, RoutingView};
use crate::rpc::Presented;
use crate::runtime;
use crate::stats::ByType;

/// How long a presence report may take before it is left to the retry.
const REPORT_TIMEOUT_MS: u32 = 2_000;
/// Pause before retrying a failed report.
const RETRY_MS: u64 = 1_000;

/// What stats need from the index.
pub(super) struct IndexSnapshot {
    pub connections: u32,
    pub by_type: ByType,
    pub sessions: Vec<u64>,
    pub machines: Vec<u64>,
    pub oldest: Option<u64>,
    pub memory: u64,
}

impl ConnectionManager {
    /// Runs `f` on the index, building it from the open sockets' attachments first if this
    /// object has just woken (the one walk of the socket list).
    pub(super) fn with_index<R>(&self, f: impl FnOnce(&mut SocketIndex) -> R) -> R {
        let mut slot = self.index.borrow_mut();
        let ix = slot.get_or_insert_with(|| self.build_index(None));
        f(ix)
    }

    /// Builds the index now if this object has just woken, counting `closing` as open: a
    /// close that is the first event after a wake must still find its socket counted, or it
    /// would change no count, store no hook and report no presence until a reconcile.
    pub(super) fn index_with_closing(&self, closing: &SocketMeta) {
        let mut slot = self.index.borrow_mut();
        if slot.is_none() {
            *slot = Some(self.build_index(Some(closing)));
        }
    }

    fn build_index(&self, closing: Option<&SocketMeta>) -> SocketIndex {
        let mut metas: Vec<SocketMeta> =
            self.open_sockets().iter().filter_map(attachment).collect();
        if let Some(c) = closing {
            if !metas.iter().any(|m| m.connection_id == c.connection_id) {
                metas.push(c.clone());
            }
        }
        let sized: Vec<(SocketMeta, u64)> = metas
            .into_iter()
            .map(|m| {
                let bytes = serde_json::to_string(&m).map_or(0, |s| s.len() as u64);
                (m, bytes)
            })
            .collect();
        SocketIndex::rebuild(sized.iter().map(|(m, b)| (m, *b)))
    }

    pub(super) fn open_count(&self) -> u32 {
        self.with_index(|ix| ix.len())
    }

    pub(super) fn index_snapshot(&self) -> IndexSnapshot {
        self.with_index(|ix| IndexSnapshot {
            connections: ix.len(),
            by_type: ix.by_type(),
            sessions: ix.session_ids().map(crate::stats::id_hash).collect(),
            machines: ix.machine_ids().map(crate::stats::id_hash).collect(),
            oldest: ix.oldest_connection(),
            memory: ix.memory_bytes(),
        })
    }

    /// Counts an accepted socket; reports presence (awaited) when it changed.
    pub(super) async fn count_socket(&self, meta: &SocketMeta, attachment_bytes: u64) {
        if self.with_index(|ix| ix.add(meta, attachment_bytes)) == Change::Presence {
            self.publish_presence().await;
        }
    }

    /// Uncounts a socket that closed or was closed; a second call is a no-op.
    pub(super) async fn forget_socket(&self, connection_id: &str) {
        if self.with_index(|ix| ix.remove(connection_id)) == Change::Presence {
            self.publish_presence().await;
        }
    }

    /// Sends the current presence to the directory unless it already has it.
    pub(super) async fn publish_presence(&self) {
        let _one_at_a_time = self.presence_lock.lock().await;
        let (seq, presence) = self.with_index(|ix| (ix.seq(), ix.presence()));
        if self.presence_published.get() == Some(seq) {
            return;
        }
        let (user, shard) = {
            let s = self.saved.borrow();
            (s.user.clone(), s.name.clone())
        };
        if user.is_empty() || shard.is_empty() {
            return;
        }
        let report = PresenceReport {
            shard,
            incarnation: self.incarnation,
            seq,
            presence,
        };
        let sent = match runtime::stub(
            &self.env,
            placement::DIRECTORY_BINDING,
            &placement::directory_name(&user),
        ) {
            Ok(dir) => runtime::timeout(
                REPORT_TIMEOUT_MS,
                runtime::call::<_, Presented>(&dir, "/presence", None, &report),
            )
            .await
            .unwrap_or_else(|| Err(worker::Error::RustError("timed out".into()))),
            Err(e) => Err(e),
        };
        match sent {
            Ok(p) => {
                self.presence_published.set(Some(seq));
                self.learn_view(p.view);
            }
            Err(e) => {
                console_error!("presence report failed: {e}");
                self.saved.borrow_mut().presence_retry_at = Some(runtime::now_ms() + RETRY_MS);
                if let Err(e) = self.rearm().await {
                    console_error!("could not schedule the presence retry: {e}");
                }
            }
        }
    }

    /// The current presence report, for a reconcile pass.
    pub(super) fn presence_report(&self) -> Option<PresenceReport> {
        let shard = self.name();
        if shard.is_empty() {
            return None;
        }
        let (seq, presence) = self.with_index(|ix| (ix.seq(), ix.presence()));
        Some(PresenceReport {
            shard,
            incarnation: self.incarnation,
            seq,
            presence,
        })
    }

    /// Keeps a pushed or fetched view if it is newer than ours.
    pub(super) fn learn_view(&self, v: RoutingView) {
        let mut slot = self.view.borrow_mut();
        if slot.as_ref().is_none_or(|cur| v.version > cur.version) {
            *slot = Some(Rc::new(v));
        }
    }

    /// The routing view: ours, or (after a wake, or when `refresh` says ours proved stale)
    /// the directory's. Without an answer, whatever we have.
    pub(super) async fn current_view(&self, refresh: bool) -> Rc<RoutingView> {
        if !refresh {
            if let Some(v) = self.view.borrow().clone() {
                return v;
            }
        }
        let user = self.saved.borrow().user.clone();
        self.frame_subrequests.set(self.frame_subrequests.get() + 1);
        let fetched = match runtime::stub(
            &self.env,
            placement::DIRECTORY_BINDING,
            &placement::directory_name(&user),
        ) {
            Ok(dir) => {
                runtime::timeout(
                    REPORT_TIMEOUT_MS,
                    runtime::call::<_, RoutingView>(&dir, "/route", None, &serde_json::json!({})),
                )
                .await
            }
            Err(e) => Some(Err(e)),
        };
        match fetched {
            Some(Ok(v)) => {
                // Asked for because ours proved stale: take it even at an equal version,
                // but never over a newer push that landed meanwhile.
                let mut slot = self.view.borrow_mut();
                if slot.as_ref().is_none_or(|cur| v.version >= cur.version) {
                    *slot = Some(Rc::new(v));
                }
            }
            _ => console_error!("routing view unavailable; using the last one"),
        }
        self.view.borrow().clone().unwrap_or_default()
    }
}
