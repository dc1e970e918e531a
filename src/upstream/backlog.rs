//! The bookkeeping of an object's hook outbox, pure (the runtime side is `crate::objects::outbox`):
//! which hooks are stored, the bound, what supersedes what, which hooks go out next and what
//! the end of an attempt means. Bodies stay in storage; this keeps ~100 bytes per hook.
//!
//! - **Bound.** At most `max_hooks` hooks and `max_bytes` bytes of stored JSON per object
//!   (`UPSTREAM_HOOKS_MAX`, `UPSTREAM_HOOKS_MAX_BYTES`). Past either, the oldest hook not in
//!   flight is evicted and counted (`full`): under a long outage the newest hooks are the ones
//!   that still describe open sockets and online machines.
//! - **Coalescing.** A socket's `disconnected` supersedes its waiting `connected`, which is
//!   dropped; when that `connected` was never attempted the upstream cannot have heard of the
//!   socket, so the `disconnected` is dropped too (socket ids never repeat). A machine's
//!   transition supersedes its waiting older transition, but only the older one is dropped:
//!   a machine's transitions chain, and the upstream may have heard an earlier one. A hook in
//!   flight is never dropped: its answer may still come.
//! - **Batches.** Due hooks go out [`BATCH`] at a time, earliest due first, at most
//!   [`PER_FLUSH`] per flush. When a whole batch fails, nothing more is tried until the
//!   earliest retry of that batch, so a failing upstream costs one timeout per batch and
//!   per pause, not one per hook.

use std::collections::BTreeMap;

use super::hooks::{retry_wait_ms, Hook, GIVE_UP_AFTER_MS};
use observability::metrics::HookLoss;

/// Default of `UPSTREAM_HOOKS_MAX`: hooks stored per object.
pub const DEFAULT_MAX_HOOKS: u32 = 1_000;
/// Default of `UPSTREAM_HOOKS_MAX_BYTES`: bytes of stored hooks per object (1 MiB).
pub const DEFAULT_MAX_BYTES: u32 = 1 << 20;
/// Hooks posted at once.
pub const BATCH: usize = 8;
/// Hooks attempted per flush at most; the owner's alarm comes back for the rest.
pub const PER_FLUSH: usize = 64;

/// The outbox's bound.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Bounds {
    pub max_hooks: usize,
    pub max_bytes: usize,
}

impl Default for Bounds {
    fn default() -> Self {
        Bounds {
            max_hooks: DEFAULT_MAX_HOOKS as usize,
            max_bytes: DEFAULT_MAX_BYTES as usize,
        }
    }
}

/// A hook that left without reaching the upstream: its kind (`connected`, ...) and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lost {
    pub kind: String,
    pub why: HookLoss,
}

impl Lost {
    fn of(id: &str, why: HookLoss) -> Self {
        Lost {
            kind: kind(id).to_owned(),
            why,
        }
    }
}

/// The kind of a hook id: `connected`, `disconnected`, `machine-online`, `machine-offline`.
pub fn kind(id: &str) -> &str {
    id.split(':').next().unwrap_or("hook")
}

const ONLINE: &str = "machine-online:";
const OFFLINE: &str = "machine-offline:";

/// What a hook is about, read from its id (`hooks::connected` and friends).
enum Subject<'a> {
    Socket {
        open: bool,
        conn: &'a str,
    },
    /// `{user}:{machine}`: one home serves one user, so this names the machine.
    Machine(&'a str),
    Other,
}

fn subject(id: &str) -> Subject<'_> {
    if let Some(conn) = id.strip_prefix("connected:") {
        return Subject::Socket { open: true, conn };
    }
    if let Some(conn) = id.strip_prefix("disconnected:") {
        return Subject::Socket { open: false, conn };
    }
    // `machine-...:{user}:{machine}:{seq}`: the sequence number is the last part, whatever
    // colons the ids hold.
    id.strip_prefix(ONLINE)
        .or_else(|| id.strip_prefix(OFFLINE))
        .and_then(|rest| rest.rsplit_once(':'))
        .map_or(Subject::Other, |(m, _)| Subject::Machine(m))
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Entry {
    first_ms: u64,
    next_ms: u64,
    attempts: u32,
    bytes: usize,
    in_flight: bool,
}

/// The stored hooks of one object, by id.
#[derive(Debug, Default, Clone)]
pub struct Backlog {
    entries: BTreeMap<String, Entry>,
    bytes: usize,
    /// After a batch failed whole, nothing is tried before this.
    paused_until: Option<u64>,
}

/// What storage must do after [`Backlog::add`].
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Admitted {
    /// Store the new hook.
    pub store: bool,
    /// Delete these stored hooks (evicted or superseded).
    pub delete: Vec<String>,
    pub lost: Vec<Lost>,
}

/// The hooks to send now, and those given up without an attempt (to delete).
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Due {
    pub send: Vec<String>,
    pub expired: Vec<String>,
    pub lost: Vec<Lost>,
}

/// What the end of an attempt means for storage.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Settled {
    /// Delivered (2xx): delete it.
    Delete,
    /// Failed: store it again with these.
    Retry { attempts: u32, next_ms: u64 },
    /// Failed for a day: delete it; it is lost.
    Expired(Lost),
    /// Not in the backlog any more: nothing to do.
    Gone,
}

impl Backlog {
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Bytes of stored JSON.
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// A hook found in storage (the listing after a wake), `bytes` long as stored.
    pub fn restore(&mut self, h: &Hook, bytes: usize) {
        if !self.entries.contains_key(&h.id) {
            self.insert(h, bytes);
        }
    }

    fn insert(&mut self, h: &Hook, bytes: usize) {
        self.bytes = self.bytes.saturating_add(bytes);
        self.entries.insert(
            h.id.clone(),
            Entry {
                first_ms: h.first_ms,
                next_ms: h.next_ms,
                attempts: h.attempts,
                bytes,
                in_flight: false,
            },
        );
    }

    fn remove(&mut self, id: &str) -> Option<Entry> {
        let e = self.entries.remove(id)?;
        self.bytes = self.bytes.saturating_sub(e.bytes);
        Some(e)
    }

    fn drop_entry(&mut self, id: &str, why: HookLoss, out: &mut Admitted) {
        if self.remove(id).is_some() {
            out.delete.push(id.to_owned());
            out.lost.push(Lost::of(id, why));
        }
    }

    /// A new hook, `bytes` long as stored: coalesced with what it supersedes, then kept
    /// within `bounds` by evicting the oldest idle hooks.
    pub fn add(&mut self, h: &Hook, bytes: usize, bounds: Bounds) -> Admitted {
        let mut out = Admitted::default();
        // The id is the idempotency key: this hook is already stored.
        if self.entries.contains_key(&h.id) {
            return out;
        }
        match subject(&h.id) {
            Subject::Socket { open: false, conn } => {
                let opened = format!("connected:{conn}");
                let waiting = self
                    .entries
                    .get(&opened)
                    .filter(|e| !e.in_flight)
                    .map(|e| e.attempts == 0);
                if let Some(never_sent) = waiting {
                    self.drop_entry(&opened, HookLoss::Coalesced, &mut out);
                    if never_sent {
                        out.lost.push(Lost::of(&h.id, HookLoss::Coalesced));
                        return out;
                    }
                }
            }
            Subject::Machine(m) => {
                for id in self.older_transitions(m) {
                    self.drop_entry(&id, HookLoss::Coalesced, &mut out);
                }
            }
            Subject::Socket { open: true, .. } | Subject::Other => {}
        }
        if bytes > bounds.max_bytes {
            out.lost.push(Lost::of(&h.id, HookLoss::Full));
            return out;
        }
        while self.entries.len() >= bounds.max_hooks
            || self.bytes.saturating_add(bytes) > bounds.max_bytes
        {
            match self.oldest_idle() {
                Some(id) => self.drop_entry(&id, HookLoss::Full, &mut out),
                // Everything left is in flight: the newcomer is the one refused.
                None => {
                    out.lost.push(Lost::of(&h.id, HookLoss::Full));
                    return out;
                }
            }
        }
        self.insert(h, bytes);
        out.store = true;
        out
    }

    /// Waiting (not in flight) transitions of machine `m`.
    fn older_transitions(&self, m: &str) -> Vec<String> {
        let mut found = Vec::new();
        for p in [ONLINE, OFFLINE] {
            let prefix = format!("{p}{m}:");
            for (id, e) in self.entries.range(prefix.clone()..) {
                if !id.starts_with(&prefix) {
                    break;
                }
                // The prefix also matches machine `m:x`; the exact subject decides.
                if !e.in_flight && matches!(subject(id), Subject::Machine(x) if x == m) {
                    found.push(id.clone());
                }
            }
        }
        found
    }

    fn oldest_idle(&self) -> Option<String> {
        self.entries
            .iter()
            .filter(|(_, e)| !e.in_flight)
            .min_by_key(|(id, e)| (e.first_ms, *id))
            .map(|(id, _)| id.clone())
    }

    /// Up to `max` due hooks, earliest due first, marked in flight; none while paused.
    /// Hooks older than a day are given up here too, attempted or not.
    pub fn take_due(&mut self, now_ms: u64, max: usize) -> Due {
        let mut due = Due::default();
        let expired: Vec<String> = self
            .entries
            .iter()
            .filter(|(_, e)| !e.in_flight && now_ms.saturating_sub(e.first_ms) > GIVE_UP_AFTER_MS)
            .map(|(id, _)| id.clone())
            .collect();
        for id in expired {
            self.remove(&id);
            due.lost.push(Lost::of(&id, HookLoss::Expired));
            due.expired.push(id);
        }
        if self.paused_until.is_some_and(|p| now_ms < p) {
            return due;
        }
        self.paused_until = None;
        let mut ready: Vec<(u64, u64, &String)> = self
            .entries
            .iter()
            .filter(|(_, e)| !e.in_flight && e.next_ms <= now_ms)
            .map(|(id, e)| (e.next_ms, e.first_ms, id))
            .collect();
        ready.sort_unstable();
        ready.truncate(max);
        due.send = ready.into_iter().map(|(_, _, id)| id.clone()).collect();
        for id in &due.send {
            if let Some(e) = self.entries.get_mut(id) {
                e.in_flight = true;
            }
        }
        due
    }

    /// A hook taken to send whose stored value was not found: forgotten.
    pub fn forget(&mut self, id: &str) {
        self.remove(id);
    }

    /// Hooks taken to send that were not sent after all (storage could not be read): due
    /// again, no attempt counted.
    pub fn release(&mut self, ids: &[String]) {
        for id in ids {
            if let Some(e) = self.entries.get_mut(id) {
                e.in_flight = false;
            }
        }
    }

    /// Ends a batch: each hook sent with whether it got a 2xx. A batch that failed whole
    /// pauses the backlog until its earliest retry.
    pub fn settle(&mut self, results: &[(String, bool)], now_ms: u64) -> Vec<(String, Settled)> {
        let mut out = Vec::with_capacity(results.len());
        let mut earliest_retry: Option<u64> = None;
        for (id, ok) in results {
            let failed = match self.entries.get_mut(id) {
                None => None,
                Some(_) if *ok => Some(None),
                Some(e) => {
                    e.in_flight = false;
                    e.attempts = e.attempts.saturating_add(1);
                    e.next_ms = now_ms.saturating_add(retry_wait_ms(e.attempts));
                    Some(Some((e.attempts, e.next_ms, e.first_ms)))
                }
            };
            let s = match failed {
                None => Settled::Gone,
                Some(None) => {
                    self.remove(id);
                    Settled::Delete
                }
                Some(Some((_, next_ms, first_ms)))
                    if next_ms.saturating_sub(first_ms) > GIVE_UP_AFTER_MS =>
                {
                    self.remove(id);
                    Settled::Expired(Lost::of(id, HookLoss::Expired))
                }
                Some(Some((attempts, next_ms, _))) => {
                    earliest_retry = Some(earliest_retry.map_or(next_ms, |t| t.min(next_ms)));
                    Settled::Retry { attempts, next_ms }
                }
            };
            out.push((id.clone(), s));
        }
        if !results.iter().any(|(_, ok)| *ok) {
            if let Some(t) = earliest_retry {
                self.paused_until = Some(t);
            }
        }
        out
    }

    /// When a hook is next due (never before the pause ends); `None` when nothing waits
    /// outside the batch in flight.
    pub fn next_due(&self) -> Option<u64> {
        let earliest = self
            .entries
            .values()
            .filter(|e| !e.in_flight)
            .map(|e| e.next_ms)
            .min()?;
        Some(self.paused_until.map_or(earliest, |p| p.max(earliest)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::ClientType;
    use crate::upstream::hooks;
    use crate::upstream::SenderInfo;

    fn sender(conn: &str) -> SenderInfo {
        SenderInfo {
            user_id: "u".into(),
            tier: "pro".into(),
            connection_id: conn.into(),
            client_type: ClientType::UserScoped,
            session_id: None,
            machine_id: None,
            shard: "cm:u".into(),
        }
    }

    fn opened(conn: &str, at: u64) -> Hook {
        hooks::connected(&sender(conn), at)
    }

    fn closed(conn: &str, at: u64) -> Hook {
        hooks::disconnected(&sender(conn), 1000, at)
    }

    fn add(b: &mut Backlog, h: &Hook, bounds: Bounds) -> Admitted {
        b.add(h, h.stored().len(), bounds)
    }

    fn bounds(max_hooks: usize) -> Bounds {
        Bounds {
            max_hooks,
            max_bytes: 1 << 20,
        }
    }

    fn lost(kind: &str, why: HookLoss) -> Lost {
        Lost {
            kind: kind.into(),
            why,
        }
    }

    #[test]
    fn the_count_bound_evicts_the_oldest_hook_not_in_flight() {
        let mut b = Backlog::default();
        for i in 0..3 {
            assert!(add(&mut b, &opened(&format!("c{i}"), i), bounds(3)).store);
        }
        let a = add(&mut b, &opened("c3", 3), bounds(3));
        assert_eq!(
            a,
            Admitted {
                store: true,
                delete: vec!["connected:c0".into()],
                lost: vec![lost("connected", HookLoss::Full)],
            }
        );
        assert_eq!(b.len(), 3);
        // c1 goes out (in flight): the next eviction skips it.
        let due = b.take_due(10, 1);
        assert_eq!(due.send, vec!["connected:c1".to_owned()]);
        let a = add(&mut b, &opened("c4", 4), bounds(3));
        assert_eq!(a.delete, vec!["connected:c2".to_owned()]);
        // Only the one in flight and one other left, with a bound of 1: the other goes, and
        // with everything in flight the newcomer is refused.
        let a = add(&mut b, &opened("c5", 5), bounds(1));
        assert_eq!(a.delete.len(), 2);
        assert!(!a.store);
        assert_eq!(a.lost.last(), Some(&lost("connected", HookLoss::Full)));
        assert_eq!(b.len(), 1);
    }

    #[test]
    fn the_byte_bound_counts_stored_json() {
        let one = opened("c0", 0).stored().len();
        let by_bytes = Bounds {
            max_hooks: 100,
            max_bytes: one * 2 + one / 2,
        };
        let mut b = Backlog::default();
        for i in 0..5 {
            add(&mut b, &opened(&format!("c{i}"), i), by_bytes);
        }
        assert_eq!(b.len(), 2);
        assert!(b.bytes() <= by_bytes.max_bytes, "{}", b.bytes());
        // A hook larger than the whole bound is refused outright.
        let tiny = Bounds {
            max_hooks: 100,
            max_bytes: one - 1,
        };
        let a = add(&mut b, &opened("c9", 9), tiny);
        assert_eq!(
            (a.store, a.lost),
            (false, vec![lost("connected", HookLoss::Full)])
        );
    }

    #[test]
    fn a_socket_that_never_reached_the_upstream_costs_nothing() {
        let mut b = Backlog::default();
        add(&mut b, &opened("c1", 0), bounds(10));
        let a = add(&mut b, &closed("c1", 5), bounds(10));
        assert_eq!(
            a,
            Admitted {
                store: false,
                delete: vec!["connected:c1".into()],
                lost: vec![
                    lost("connected", HookLoss::Coalesced),
                    lost("disconnected", HookLoss::Coalesced)
                ],
            }
        );
        assert!(b.is_empty() && b.bytes() == 0);
    }

    #[test]
    fn a_connected_that_may_have_reached_the_upstream_keeps_its_disconnected() {
        let mut b = Backlog::default();
        add(&mut b, &opened("c1", 0), bounds(10));
        // Attempted and failed: the upstream may have applied it.
        let due = b.take_due(0, 8);
        b.settle(&[(due.send[0].clone(), false)], 0);
        let a = add(&mut b, &closed("c1", 5), bounds(10));
        assert!(a.store);
        assert_eq!(a.delete, vec!["connected:c1".to_owned()]);
        assert_eq!(a.lost, vec![lost("connected", HookLoss::Coalesced)]);
        // In flight: nothing is coalesced, its answer may still come.
        let mut b = Backlog::default();
        add(&mut b, &opened("c2", 0), bounds(10));
        b.take_due(0, 8);
        let a = add(&mut b, &closed("c2", 5), bounds(10));
        assert!(a.store && a.delete.is_empty() && a.lost.is_empty());
        assert_eq!(b.len(), 2);
    }

    #[test]
    fn a_machine_keeps_only_its_newest_transition() {
        let mut b = Backlog::default();
        add(&mut b, &hooks::machine("u", "m", true, 1, 0), bounds(10));
        add(&mut b, &hooks::machine("u", "m:x", true, 1, 0), bounds(10));
        let a = add(&mut b, &hooks::machine("u", "m", false, 2, 1), bounds(10));
        assert!(a.store);
        assert_eq!(a.delete, vec!["machine-online:u:m:1".to_owned()]);
        assert_eq!(a.lost, vec![lost("machine-online", HookLoss::Coalesced)]);
        let a = add(&mut b, &hooks::machine("u", "m", true, 3, 2), bounds(10));
        assert_eq!(a.delete, vec!["machine-offline:u:m:2".to_owned()]);
        // Machine `m:x` is another machine, untouched.
        assert_eq!(b.len(), 2);
        assert!(b.entries.contains_key("machine-online:u:m:x:1"));
        assert!(b.entries.contains_key("machine-online:u:m:3"));
    }

    #[test]
    fn a_repeated_hook_is_stored_once() {
        let mut b = Backlog::default();
        add(&mut b, &opened("c1", 0), bounds(10));
        assert_eq!(
            add(&mut b, &opened("c1", 7), bounds(10)),
            Admitted::default()
        );
        assert_eq!(b.len(), 1);
    }

    #[test]
    fn hooks_go_in_batches_and_a_failed_batch_pauses_the_rest() {
        let mut b = Backlog::default();
        for i in 0..20 {
            add(&mut b, &opened(&format!("c{i:02}"), i), bounds(100));
        }
        let now = 100;
        let first = b.take_due(now, BATCH);
        let want: Vec<String> = (0..8).map(|i| format!("connected:c{i:02}")).collect();
        assert_eq!(first.send, want, "the earliest due first");
        // While one batch is out, another may go.
        assert_eq!(b.take_due(now, BATCH).send.len(), 8);
        let failed: Vec<(String, bool)> = first.send.iter().map(|id| (id.clone(), false)).collect();
        let settled = b.settle(&failed, now);
        assert!(settled.iter().all(|(_, s)| *s
            == Settled::Retry {
                attempts: 1,
                next_ms: now + 1_000
            }));
        // The upstream is down: nothing more until the failed batch's first retry, though
        // four hooks were never tried.
        assert_eq!(b.take_due(now + 999, BATCH).send, Vec::<String>::new());
        assert_eq!(b.next_due(), Some(now + 1_000));
        let after = b.take_due(now + 1_000, BATCH);
        assert_eq!(after.send.len(), 8);
        assert!(
            after.send.contains(&"connected:c16".to_owned()),
            "{after:?}"
        );
        // A batch with one success does not pause.
        let mut results: Vec<(String, bool)> =
            after.send.iter().map(|id| (id.clone(), false)).collect();
        results[0].1 = true;
        let settled = b.settle(&results, now + 1_000);
        assert_eq!(settled[0].1, Settled::Delete);
        assert_eq!(b.len(), 19);
        // The rest of the first batch (due since the pause ended) may go at once.
        assert_eq!(b.take_due(now + 1_000, BATCH).send.len(), 4);
        assert_eq!(b.next_due(), Some(now + 2_000));
    }

    #[test]
    fn a_dead_upstream_costs_one_failed_batch_per_flush() {
        // 1,000 hooks, an upstream that never answers: each flush (the runtime's loop over
        // take_due and settle, at most PER_FLUSH) ends after its first batch.
        let mut b = Backlog::default();
        for i in 0..1_000u64 {
            add(&mut b, &opened(&format!("c{i:04}"), i), Bounds::default());
        }
        let mut now = 10_000;
        let mut flushes = 0;
        while now < 10_000 + 60_000 {
            let mut batches = 0;
            let mut tried = 0;
            while tried < PER_FLUSH {
                let due = b.take_due(now, BATCH.min(PER_FLUSH - tried));
                if due.send.is_empty() {
                    break;
                }
                tried += due.send.len();
                batches += 1;
                let r: Vec<(String, bool)> = due.send.into_iter().map(|id| (id, false)).collect();
                b.settle(&r, now);
            }
            assert!(batches <= 1, "{batches} failed batches in one flush");
            flushes += 1;
            now = b.next_due().unwrap_or(now + 1).max(now + 1);
        }
        assert_eq!(b.len(), 1_000, "kept for retry");
        assert!(flushes < 100, "{flushes} flushes in a minute");
    }

    #[test]
    fn retries_back_off_and_give_up_after_a_day() {
        let mut b = Backlog::default();
        add(&mut b, &opened("c1", 0), bounds(10));
        let mut now = 0;
        let mut expired = None;
        for _ in 0..400 {
            let due = b.take_due(now, 1);
            let Some(id) = due.send.first() else {
                expired = due.lost.first().cloned();
                break;
            };
            match &b.settle(&[(id.clone(), false)], now)[0].1 {
                Settled::Retry { next_ms, .. } => now = *next_ms,
                Settled::Expired(l) => {
                    expired = Some(l.clone());
                    break;
                }
                other => panic!("{other:?}"),
            }
        }
        assert_eq!(expired, Some(lost("connected", HookLoss::Expired)));
        assert!(now <= GIVE_UP_AFTER_MS + 300_000, "{now}");
        assert!(b.is_empty());
        // One never attempted for a day is given up when next looked at.
        add(&mut b, &opened("c2", 0), bounds(10));
        let due = b.take_due(GIVE_UP_AFTER_MS + 1, 8);
        assert_eq!(
            (due.send.len(), due.expired),
            (0, vec!["connected:c2".to_owned()])
        );
    }

    #[test]
    fn restored_hooks_keep_their_schedule() {
        let mut h = opened("c1", 0);
        h.failed(50);
        let mut b = Backlog::default();
        b.restore(&h, 300);
        b.restore(&h, 300);
        assert_eq!((b.len(), b.bytes()), (1, 300));
        assert_eq!(b.next_due(), Some(1_050));
        assert!(b.take_due(1_049, 8).send.is_empty());
        assert_eq!(b.take_due(1_050, 8).send.len(), 1);
        assert_eq!(b.next_due(), None, "the only hook is in flight");
        b.release(&["connected:c1".to_owned()]);
        assert_eq!(b.next_due(), Some(1_050), "released, due again");
        b.forget("connected:c1");
        assert!(b.is_empty());
        assert_eq!(
            b.settle(&[("connected:c1".into(), true)], 2_000)[0].1,
            Settled::Gone
        );
    }

    #[test]
    fn a_random_schedule_keeps_the_bound_and_the_byte_count() {
        let mut seed = 0x2545_f491_4f6c_dd1du64;
        let mut next = move |n: u64| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed % n
        };
        let bounds = Bounds {
            max_hooks: 40,
            max_bytes: 12_000,
        };
        let mut b = Backlog::default();
        let mut stored: BTreeMap<String, usize> = BTreeMap::new();
        let mut out_now: Vec<String> = Vec::new();
        let mut now = 0;
        for _ in 0..20_000 {
            now += next(500);
            let conn = format!("c{}", next(60));
            let h = match next(5) {
                0 => closed(&conn, now),
                1 => hooks::machine("u", &format!("m{}", next(4)), next(2) == 0, now, now),
                _ => opened(&conn, now),
            };
            if next(3) == 0 {
                let due = b.take_due(now, BATCH);
                for id in &due.expired {
                    stored.remove(id);
                }
                let r: Vec<(String, bool)> =
                    out_now.drain(..).map(|id| (id, next(2) == 0)).collect();
                for (id, s) in b.settle(&r, now) {
                    if matches!(s, Settled::Delete | Settled::Expired(_)) {
                        stored.remove(&id);
                    }
                }
                out_now = due.send;
            } else {
                let len = h.stored().len();
                let a = b.add(&h, len, bounds);
                for id in &a.delete {
                    assert!(stored.remove(id).is_some(), "{id} was not stored");
                    assert!(!out_now.contains(id), "{id} dropped while in flight");
                }
                if a.store {
                    stored.insert(h.id.clone(), len);
                }
            }
            assert!(b.len() <= bounds.max_hooks);
            assert!(b.bytes() <= bounds.max_bytes);
            assert_eq!(b.len(), stored.len());
            assert_eq!(b.bytes(), stored.values().sum::<usize>());
        }
    }
}
