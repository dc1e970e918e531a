//! Sockets the shard ends itself: credentials that expired or were revoked, an operator's
//! disconnect, and (in `drain`) rotation; and the shard's own end, when it is empty. A socket the server closes may never reach the
//! close handler, so what its close changes (counts, presence, the `disconnected` hook) is
//! settled here at once; the caller gives slots back once per batch (`settle`).

use worker::WebSocket;

use super::{attachment, close, ConnectionManager};
use crate::object_api::{Disconnect, Ended};
use crate::protocol::{self, conn_tag, CredentialEnd, SocketMeta};
use crate::runtime;

impl ConnectionManager {
    /// What a close changes: the guard, counts and presence, and the `disconnected` hook.
    /// A second call for the same socket changes nothing.
    pub(super) async fn count_close(&self, m: &SocketMeta, code: u16) {
        self.guards.borrow_mut().remove(&m.connection_id);
        self.calls.borrow_mut().closed(&m.connection_id);
        let was_open = self.with_index(|ix| ix.contains(&m.connection_id));
        self.forget_socket(&m.connection_id).await;
        if was_open {
            if let Ok(cfg) = runtime::config(&self.env) {
                if cfg.upstream.posts_hooks() {
                    let hook = self.disconnected_hook(m, code);
                    self.post_hooks(&cfg, vec![hook]).await;
                }
            }
        }
    }

    /// Closes `ws` (its last frame already sent) and counts the close.
    pub(super) async fn end_socket(&self, ws: &WebSocket, m: &SocketMeta, code: u16, reason: &str) {
        close(ws, code, reason);
        self.count_close(m, code).await;
    }

    /// Ends the sockets whose credential has expired: an `auth-error` frame, then 4001.
    pub(super) async fn expire_sockets(&self, now: u64) -> worker::Result<()> {
        let due = self.with_index(|ix| ix.expired(now));
        if due.is_empty() {
            return Ok(());
        }
        let frame = protocol::auth_error_frame(CredentialEnd::Expired, now);
        for id in &due {
            for ws in self.sockets_with(Some(&conn_tag(id))) {
                if let Some(m) = attachment(&ws) {
                    let _ = ws.send_with_str(&frame);
                    self.end_socket(&ws, &m, protocol::AUTH_FAILED, protocol::AUTH_FAILED_REASON)
                        .await;
                }
            }
            // Gone from the runtime already: uncount it all the same.
            self.forget_socket(id).await;
        }
        self.settle().await?;
        self.observe_gauges().await;
        Ok(())
    }

    /// Ends, at once, the sockets `d` selects on this shard.
    pub(super) async fn disconnect(&self, d: &Disconnect) -> worker::Result<Ended> {
        let tag = d
            .tag()
            .map_err(|e| worker::Error::RustError(e.to_owned()))?;
        let now = runtime::now_ms();
        let why = d.why();
        let frame = protocol::auth_error_frame(why, now);
        let reason = match why {
            CredentialEnd::Disconnected => "Disconnected by the server",
            _ => protocol::AUTH_FAILED_REASON,
        };
        let mut closed = 0;
        for ws in self.sockets_with(tag.as_deref()) {
            let Some(m) = attachment(&ws) else { continue };
            if ws.as_ref().ready_state() != super::OPEN {
                continue;
            }
            let _ = ws.send_with_str(&frame);
            self.end_socket(&ws, &m, protocol::AUTH_FAILED, reason)
                .await;
            closed += 1;
        }
        if closed > 0 {
            self.settle().await?;
            self.observe_gauges().await;
        }
        Ok(Ended { closed })
    }
}

impl ConnectionManager {
    /// Whether this shard holds nothing that must outlive it: no socket, no slot, no drain
    /// under way.
    pub(super) fn retirable(&self) -> bool {
        let s = self.saved.borrow();
        s.lease.leased == 0 && s.drain_at.is_none() && self.open_count() == 0
    }

    /// Asks the alarm to check, once nothing else is due, whether the storage can go.
    pub(super) async fn retire_soon(&self) {
        // A home writes nothing while its user fits on it, and keeps the user's state when
        // it has some: it is never worth an alarm to check.
        if self.is_home() {
            return;
        }
        if self.retirable() && self.retire_at.get().is_none() {
            self.retire_at.set(Some(runtime::now_ms()));
            if let Err(e) = self.rearm().await {
                worker::console_error!("could not schedule the retirement check: {e}");
            }
        }
    }

    /// Deletes this object's storage when it is empty, out of its user's set (no slots: the
    /// home forgets a shard that holds none) and has nothing left to send: a drained
    /// epoch or an ended session leaves nothing behind. Waits for a pending report, save or
    /// hook first. Answers whether it deleted.
    pub(super) async fn retire(&self) -> worker::Result<bool> {
        let busy = self.observer.borrow().report_at.is_some()
            || self.reporter.borrow().busy()
            || self.outbox.due_at().is_some()
            || (self.is_home() && self.home.push_pending());
        if !self.retirable() {
            return Ok(false);
        }
        // The home keeps the user's state for as long as there is any.
        if self.is_home() && self.home.holds_state().await {
            return Ok(false);
        }
        if busy || self.outbox.has_pending(&self.state.storage()).await {
            // Checked again once those are done.
            self.retire_at
                .set(Some(runtime::now_ms() + RETIRE_RECHECK_MS));
            return Ok(false);
        }
        self.state.storage().delete_all().await?;
        self.state.storage().delete_alarm().await?;
        self.clock.fired();
        // Memory keeps what a next connect would learn again anyway.
        let mut s = self.saved.borrow_mut();
        *s = super::state::Persisted {
            name: std::mem::take(&mut s.name),
            user: std::mem::take(&mut s.user),
            tier: std::mem::take(&mut s.tier),
            ..Default::default()
        };
        Ok(true)
    }
}

/// How long a shard waiting to retire waits for what it still has to send.
const RETIRE_RECHECK_MS: u64 = 5_000;
