//! A frame's way through the edge: the envelope, the platform's rules, then delivery on this
//! shard and on the other shards the routing view names, concurrently and with no home
//! call while the view holds. RPCs carry a sealed reference to their caller (see
//! `routing::ack_id`) so the answer reaches exactly the calling socket, wherever it is.
//!
//! Subrequests per frame: one per other shard that may hold a recipient; for an RPC whose
//! target the view does not know (or that proved stale), one more to the home for a
//! fresh view; for an answer whose caller sits on another shard, one.

use std::borrow::Cow;

use serde_json::value::RawValue;
use worker::{console_error, WebSocket, WebSocketIncomingMessage};

use super::presence::Want;
use super::{attachment, close, ConnectionManager};
use crate::config::Config;
use crate::object_api::{AckRelay, Deliver, Delivered, Disconnect, Disconnected};
use crate::protocol::BroadcastResult;
use crate::protocol::{self, Delivery, Filter, SocketMeta};
use crate::routing::ack_id::{self, CallRef};
use crate::routing::envelope::{self, Parsed, MESSAGE_TOO_BIG, PROTOCOL_ERROR};
use crate::routing::rules::{self, Action, Sender};
use crate::routing::view::RoutingView;
use crate::runtime;
use crate::upstream::QueuedEvent;
use observability::metrics::Series;

impl ConnectionManager {
    /// One client frame: admitted by the guard, read, parsed into a typed step, then applied
    /// (the platform's built-in and business events first, then its routing rules).
    pub(super) async fn on_frame(
        &self,
        ws: WebSocket,
        message: WebSocketIncomingMessage,
    ) -> worker::Result<()> {
        let started = runtime::now_ms();
        let cfg = match runtime::config(&self.env) {
            Ok(c) => c,
            // Unreachable while the gateway admits sockets; keep the socket, do nothing.
            Err(_) => return Ok(()),
        };
        runtime::sleep(self.knob(&cfg).latency_ms).await;
        if !self.admit_frame(&cfg, &ws) {
            return Ok(());
        }
        let text = match self.frame_text(&cfg, &ws, message) {
            Ok(t) => t,
            Err(done) => return done,
        };
        let frame = match envelope::parse(&text) {
            Parsed::Frame(f) => f,
            Parsed::ClientAck => return Ok(()),
            Parsed::Invalid(k) => return self.bad_frame(&cfg, &ws, PROTOCOL_ERROR, k.message()),
        };
        let Some(meta) = attachment(&ws) else {
            return Ok(());
        };
        let Some(frame) = self.business(&cfg, &ws, &meta, frame, started).await else {
            return Ok(());
        };
        let sender = Sender {
            connection_id: &meta.connection_id,
            client_type: meta.client_type,
        };
        self.frames.set(self.frames.get() + 1);
        self.apply(&cfg, &ws, &meta, rules::route(sender, frame), started)
            .await?;
        self.observe_latency(Series::MessageLatency, started).await;
        Ok(())
    }

    /// The frame's text (binary frames are read as UTF-8, as the platform does), or the
    /// answer already given: a close for an oversized frame, an error frame for bad UTF-8.
    fn frame_text(
        &self,
        cfg: &Config,
        ws: &WebSocket,
        message: WebSocketIncomingMessage,
    ) -> Result<String, worker::Result<()>> {
        let max = cfg.max_message_bytes;
        let text = match message {
            WebSocketIncomingMessage::String(t) => t,
            WebSocketIncomingMessage::Binary(b) if b.len() > max => {
                return Err(close_too_big(ws, b.len(), max));
            }
            WebSocketIncomingMessage::Binary(b) => String::from_utf8(b).map_err(|_| {
                self.bad_frame(cfg, ws, PROTOCOL_ERROR, envelope::Invalid::Json.message())
            })?,
        };
        if text.len() > max {
            return Err(close_too_big(ws, text.len(), max));
        }
        Ok(text)
    }

    /// The built-in `update-usage-limits` and the business events for the upstream, before
    /// the routing rules: `None` when handled here. A business event with an `ackId` that no
    /// upstream will answer gets its error ack now (not after the client's timeout), and is
    /// still routed as the platform's fallthrough routes it.
    async fn business<'a>(
        &self,
        cfg: &Config,
        ws: &WebSocket,
        meta: &SocketMeta,
        frame: envelope::Inbound<'a>,
        started: u64,
    ) -> Option<envelope::Inbound<'a>> {
        if frame.event == "update-usage-limits" {
            self.usage_limits(ws, meta, frame.data, frame.ack_id.as_deref())
                .await;
            return None;
        }
        if let Some(label) = cfg
            .upstream
            .enabled()
            .then(|| cfg.upstream.events.label(&frame.event))
            .flatten()
        {
            let b = QueuedEvent {
                event: frame.event.into_owned(),
                label,
                data: frame.data.map(ToOwned::to_owned),
                ack_id: frame.ack_id.map(Cow::into_owned),
            };
            self.to_upstream(cfg, ws, meta, b).await;
            self.observe_latency(Series::MessageLatency, started).await;
            return None;
        }
        if let Some(ack_id) = frame.ack_id.as_deref() {
            if let Some(ack) = crate::upstream::unanswered_ack(&frame.event) {
                let _ = ws.send_with_str(envelope::ack_frame(ack_id, &ack));
            }
        }
        Some(frame)
    }

    /// Applies what the routing rules decided for a frame.
    async fn apply(
        &self,
        cfg: &Config,
        ws: &WebSocket,
        meta: &SocketMeta,
        action: Action<'_>,
        started: u64,
    ) -> worker::Result<()> {
        match action {
            Action::Pong => {
                ws.send_with_str(protocol::pong_frame(runtime::now_ms()))?;
            }
            Action::Deliver(d) => {
                let view = self.current_view(Want::Cached).await;
                self.deliver_everywhere(&d, &view).await;
                if matches!(d.filter, Filter::Exclude { .. }) {
                    self.observe_latency(Series::BroadcastDelivery, started)
                        .await;
                }
            }
            Action::RpcToId {
                target,
                data,
                ack_id,
            } => self.rpc_to_id(cfg, ws, meta, &target, data, ack_id).await,
            Action::RpcToApps {
                event,
                data,
                ack_id,
            } => self.rpc_to_apps(cfg, ws, meta, &event, data, ack_id).await,
            Action::RpcResponse { ack_id, ack } => {
                self.rpc_response(cfg, meta, &ack_id, &ack).await
            }
            Action::Drop(_) => {}
        }
        Ok(())
    }

    /// Delivers on this shard, then on every other shard the view says may hold a recipient.
    pub(super) async fn deliver_everywhere(&self, d: &Delivery, view: &RoutingView) -> Delivered {
        let here = self.deliver(d);
        let me = self.name();
        let others: Vec<String> = view
            .targets(&d.filter)
            .into_iter()
            .filter(|n| *n != me)
            .collect();
        let (there, _) = self.deliver_on(&others, d).await;
        here.sum(there)
    }

    /// At the home: an HTTP broadcast for the user, delivered here and on every other shard
    /// that may hold a recipient.
    pub(super) async fn broadcast(&self, d: &Delivery) -> BroadcastResult {
        // This shard counts as visited only when its own presence may hold a recipient.
        let me = self.name();
        let here_too = self.home.view().targets(&d.filter).contains(&me);
        let here = if here_too {
            self.deliver(d)
        } else {
            Delivered::default()
        };
        let others = self.home.targets(&d.filter);
        let (there, failed) = self.deliver_on(&others, d).await;
        BroadcastResult {
            success: true,
            delivered: here.delivered + there.delivered,
            shards: others.len() as u64 + u64::from(here_too),
            failed_shards: failed,
        }
    }

    /// At the home: ends the sockets `d` selects here and on every other shard of the user.
    pub(super) async fn disconnect_user(&self, d: &Disconnect) -> worker::Result<Disconnected> {
        let here = self.disconnect(d).await?;
        let others = self.home.all_shards();
        let timeout_ms = runtime::config(&self.env)
            .map(|c| c.fanout_timeout_ms)
            .unwrap_or(5_000);
        let body = runtime::encode(d)?;
        let calls = others.iter().map(|name| {
            let body = &body;
            async move {
                let stub =
                    runtime::object(&self.env, crate::object_api::SHARD_BINDING, name).ok()?;
                runtime::timeout(timeout_ms, runtime::ask_encoded(&stub, Some(name), body))
                    .await?
                    .ok()
            }
        });
        let mut out = Disconnected {
            closed: here.closed,
            shards: others.len() + 1,
            failed_shards: Vec::new(),
        };
        for (name, r) in others.iter().zip(futures::future::join_all(calls).await) {
            match r {
                Some(e) => out.closed += e.closed,
                None => out.failed_shards.push(name.clone()),
            }
        }
        Ok(out)
    }

    /// A delivery on each of `shards`, concurrently, within the fan-out timeout, its body
    /// serialised once. Answers the sum and the shards that failed.
    async fn deliver_on(&self, shards: &[String], d: &Delivery) -> (Delivered, Vec<String>) {
        if shards.is_empty() {
            return (Delivered::default(), Vec::new());
        }
        let Ok(body) = runtime::encode(&Deliver(d.clone())) else {
            return (Delivered::default(), shards.to_vec());
        };
        let timeout_ms = runtime::config(&self.env)
            .map(|c| c.fanout_timeout_ms)
            .unwrap_or(5_000);
        let n = shards.len() as u64;
        self.relays_in_flight.set(self.relays_in_flight.get() + n);
        self.frame_subrequests.set(self.frame_subrequests.get() + n);
        let calls = shards.iter().map(|name| {
            let body = &body;
            async move {
                let r = match runtime::object(&self.env, crate::object_api::SHARD_BINDING, name) {
                    Ok(stub) => {
                        runtime::timeout(timeout_ms, runtime::ask_encoded(&stub, Some(name), body))
                            .await
                    }
                    Err(e) => Some(Err(e)),
                };
                self.relays_in_flight
                    .set(self.relays_in_flight.get().saturating_sub(1));
                match r {
                    Some(Ok(got)) => Ok(got),
                    _ => {
                        console_error!("delivery to {name} failed");
                        Err(name.clone())
                    }
                }
            }
        });
        let mut total = Delivered::default();
        let mut failed = Vec::new();
        for r in futures::future::join_all(calls).await {
            match r {
                Ok(got) => total = total.sum(got),
                Err(name) => failed.push(name),
            }
        }
        (total, failed)
    }

    /// The caller's `ackId`, sealed with where to bring the answer.
    /// The call is remembered as in flight until its answer (`routing::calls`).
    fn seal(&self, cfg: &Config, caller: &SocketMeta, ack_id: Option<&str>) -> Option<String> {
        let a = ack_id?;
        let now = runtime::now_ms();
        self.calls.borrow_mut().sent(&caller.connection_id, a, now);
        Some(ack_id::seal(
            &cfg.ack_key,
            &CallRef {
                user: caller.user_id.clone(),
                shard: self.name(),
                connection: caller.connection_id.clone(),
                ack_id: a.to_owned(),
                expires_ms: now + ack_id::TTL_MS,
            },
        ))
    }

    /// An app calls `<target>:<method>`: the machine's sockets if the machine is connected
    /// anywhere, else the session's sockets and every user-scoped one (the platform's rule).
    /// A view that does not know the target, or that proves stale (nobody took the call), is
    /// asked of the home once, which waits for the target's report up to a bound (a machine
    /// connecting on another shard right now is reported within milliseconds); if still
    /// nobody can take it, the caller gets "RPC method not available" at once instead of a
    /// 30 s timeout.
    async fn rpc_to_id(
        &self,
        cfg: &Config,
        ws: &WebSocket,
        caller: &SocketMeta,
        target: &str,
        data: &RawValue,
        ack_id: Option<Cow<'_, str>>,
    ) {
        let sealed = self.seal(cfg, caller, ack_id.as_deref());
        let frame = envelope::forward_frame("rpc-request", Some(data), sealed.as_deref());
        let me = self.name();
        let mut view = self.current_view(Want::Cached).await;
        let mut refreshed = false;
        let machine = Delivery {
            frame: frame.clone(),
            filter: Filter::Machine {
                machine_id: target.to_owned(),
            },
        };
        loop {
            // Listed here without a socket: the home holds it for a machine that moves.
            let here = self.with_index(|ix| ix.has_scoped_machine(target))
                || view.machine_shards(target).contains(&me);
            let there: Vec<String> = view
                .machine_shards(target)
                .into_iter()
                .filter(|n| *n != me)
                .collect();
            if here || !there.is_empty() {
                let local = if here {
                    self.deliver(&machine)
                } else {
                    Delivered::default()
                };
                if local.sum(self.deliver_on(&there, &machine).await.0).primary > 0 {
                    return;
                }
            }
            if refreshed {
                break;
            }
            view = self.current_view(Want::Target(target)).await;
            refreshed = true;
        }
        // Listed here without a socket counts too: the home holds it for a session that moves.
        let session_known = |v: &RoutingView| {
            self.with_index(|ix| ix.has_scoped_session(target))
                || !v.session_shards(target).is_empty()
        };
        if session_known(&view) {
            let d = Delivery {
                frame,
                filter: Filter::AllInterestedInSession {
                    session_id: target.to_owned(),
                },
            };
            if self.deliver_everywhere(&d, &view).await.primary > 0 {
                return;
            }
        }
        self.not_available(ws, caller, ack_id.as_deref());
    }

    /// The CLI calls the apps: every user-scoped socket, under the event's own name.
    async fn rpc_to_apps(
        &self,
        cfg: &Config,
        ws: &WebSocket,
        caller: &SocketMeta,
        event: &str,
        data: Option<&RawValue>,
        ack_id: Option<Cow<'_, str>>,
    ) {
        let sealed = self.seal(cfg, caller, ack_id.as_deref());
        let d = Delivery {
            frame: envelope::forward_frame(event, data, sealed.as_deref()),
            filter: Filter::UserScopedOnly,
        };
        let view = self.current_view(Want::Cached).await;
        let mut got = self.deliver_everywhere(&d, &view).await;
        if got.primary == 0 && !self.is_home() {
            let me = self.name();
            let tried = view.user_scoped_shards();
            let fresh = self.current_view(Want::Fresh).await;
            let new: Vec<String> = fresh
                .user_scoped_shards()
                .into_iter()
                .filter(|n| *n != me && !tried.contains(n))
                .collect();
            got = got.sum(self.deliver_on(&new, &d).await.0);
        }
        if got.primary == 0 {
            self.not_available(ws, caller, ack_id.as_deref());
        }
    }

    fn not_available(&self, ws: &WebSocket, caller: &SocketMeta, ack_id: Option<&str>) {
        if let Some(a) = ack_id {
            self.calls.borrow_mut().answered(&caller.connection_id, a);
            let _ = ws.send_with_str(envelope::ack_frame(a, envelope::RPC_NOT_AVAILABLE));
        }
    }

    /// An answer: to the caller's shard (here, or one call away), which sends it to the
    /// calling socket only. A reference this edge did not seal, another user's, or an expired
    /// one goes nowhere.
    async fn rpc_response(&self, cfg: &Config, responder: &SocketMeta, sealed: &str, ack: &str) {
        // Answered: a drain may close this socket now.
        self.calls
            .borrow_mut()
            .answered(&responder.connection_id, sealed);
        let call = match ack_id::open(&cfg.ack_key, sealed, &responder.user_id, runtime::now_ms()) {
            Ok(c) => c,
            Err(e) => {
                console_error!("rpc-response dropped: {e}");
                return;
            }
        };
        if call.shard == self.name() {
            self.answer(cfg, sealed, ack);
            return;
        }
        self.frame_subrequests.set(self.frame_subrequests.get() + 1);
        let relay = AckRelay {
            ack_id: sealed.to_owned(),
            ack: ack.to_owned(),
        };
        let sent = match runtime::object(&self.env, crate::object_api::SHARD_BINDING, &call.shard) {
            Ok(stub) => runtime::timeout(
                cfg.fanout_timeout_ms,
                runtime::ask(&stub, Some(&call.shard), &relay),
            )
            .await
            .map(|r| r.map(|_| ())),
            Err(e) => Some(Err(e)),
        };
        if !matches!(sent, Some(Ok(()))) {
            console_error!("rpc answer to {} failed", call.shard);
        }
    }

    /// On the caller's shard: sends the answer to the calling socket, once per call.
    pub(super) fn answer(&self, cfg: &Config, sealed: &str, ack: &str) -> bool {
        let user = self.saved.borrow().user.clone();
        let now = runtime::now_ms();
        let Ok(call) = ack_id::open(&cfg.ack_key, sealed, &user, now) else {
            return false;
        };
        {
            let mut answered = self.answered.borrow_mut();
            if answered.get(sealed).is_some_and(|exp| *exp >= now) {
                return false;
            }
            answered.insert(sealed, call.expires_ms);
        }
        self.calls
            .borrow_mut()
            .answered(&call.connection, &call.ack_id);
        let frame = envelope::ack_frame(&call.ack_id, ack);
        let sent = self
            .sockets_with(Some(&protocol::conn_tag(&call.connection)))
            .iter()
            .any(|w| w.send_with_str(&frame).is_ok());
        // The caller was moved meanwhile: the answer follows it to its next socket.
        sent || self.answer_moved(&call.connection, frame)
    }
}

fn close_too_big(ws: &WebSocket, size: usize, limit: usize) -> worker::Result<()> {
    let _ = ws.send_with_str(envelope::error_frame(
        MESSAGE_TOO_BIG,
        &format!("frame is {size} bytes; MAX_MESSAGE_BYTES is {limit}"),
        runtime::now_ms(),
    ));
    close(ws, 1009, "message too big");
    Ok(())
}
