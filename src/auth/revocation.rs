//! The revocation feed's bookkeeping, pure: which `RevokedToken` rows it has read (a
//! watermark on `revokedAt` plus the hashes seen at that instant), and the dispatches still
//! to make (each revocation twice, failures retried), bounded.

use std::collections::BTreeSet;

use serde::{Deserialize, Serialize};

use crate::auth::cache::RECHECK_MS;

/// Dispatches waiting for their second round (or a retry) at most; past it the oldest is
/// dropped and counted.
pub const MAX_PENDING: usize = 10_000;
/// A dispatch that failed (a shard or home did not answer) is retried this much later.
const RETRY_MS: u64 = 2_000;
/// The second dispatch, after the token caches have all rechecked the token.
const SECOND_ROUND_MS: u64 = RECHECK_MS + 5_000;

/// One revocation to dispatch at `due_ms`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Pending {
    pub due_ms: u64,
    pub user_id: String,
    pub token_hash: String,
    /// Whether this is the last dispatch for it.
    pub last: bool,
}

/// What the feed remembers, and what it reports at `GET /admin/revocations`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct Feed {
    /// Rows with `revokedAt` before this were all read.
    pub watermark_ms: u64,
    /// Hashes already read whose `revokedAt` equals the watermark.
    seen_at_watermark: BTreeSet<String>,
    pending: Vec<Pending>,
    /// Revocations read, sockets ended, dispatches dropped for the bound, failed dispatches.
    read: u64,
    closed: u64,
    shed: u64,
    failures: u64,
    pub last_poll_ms: Option<u64>,
    pub last_error: Option<String>,
}

impl Feed {
    /// Takes the rows of one page (ordered by `revokedAt`): new ones are queued for dispatch
    /// and the watermark moves past them. Answers how many were new.
    pub fn take_rows(&mut self, rows: &[Row], now_ms: u64) -> usize {
        let mut new = 0;
        for r in rows {
            if r.revoked_at < self.watermark_ms
                || (r.revoked_at == self.watermark_ms
                    && self.seen_at_watermark.contains(&r.token_hash))
            {
                continue;
            }
            if r.revoked_at > self.watermark_ms {
                self.watermark_ms = r.revoked_at;
                self.seen_at_watermark.clear();
            }
            self.seen_at_watermark.insert(r.token_hash.clone());
            self.read += 1;
            new += 1;
            self.queue(Pending {
                due_ms: now_ms,
                user_id: r.user_id.clone(),
                token_hash: r.token_hash.to_ascii_lowercase(),
                last: false,
            });
        }
        new
    }

    fn queue(&mut self, p: Pending) {
        if self.pending.len() >= MAX_PENDING {
            self.pending.remove(0);
            self.shed += 1;
        }
        self.pending.push(p);
    }

    /// Removes and answers what is due at `now_ms`.
    pub fn due(&mut self, now_ms: u64) -> Vec<Pending> {
        let (due, rest) = std::mem::take(&mut self.pending)
            .into_iter()
            .partition(|p| p.due_ms <= now_ms);
        self.pending = rest;
        due
    }

    /// After a dispatch: its second round, or a retry when it failed.
    pub fn dispatched(&mut self, p: Pending, result: Result<u64, ()>, now_ms: u64) {
        match result {
            Ok(closed) => {
                self.closed += closed;
                if !p.last {
                    self.queue(Pending {
                        due_ms: now_ms + SECOND_ROUND_MS,
                        last: true,
                        ..p
                    });
                }
            }
            Err(()) => {
                self.failures += 1;
                self.queue(Pending {
                    due_ms: now_ms + RETRY_MS,
                    ..p
                });
            }
        }
    }

    pub fn next_due(&self) -> Option<u64> {
        self.pending.iter().map(|p| p.due_ms).min()
    }
}

/// A `RevokedToken` row as the feed reads it.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Row {
    pub token_hash: String,
    pub user_id: String,
    pub revoked_at: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(hash: &str, at: u64) -> Row {
        Row {
            token_hash: hash.into(),
            user_id: "u".into(),
            revoked_at: at,
        }
    }

    #[test]
    fn rows_are_taken_once_even_at_the_same_instant() {
        let mut f = Feed::default();
        assert_eq!(f.take_rows(&[row("a", 10), row("b", 10)], 0), 2);
        // The next query starts at the watermark: both come back, plus a new one.
        assert_eq!(
            f.take_rows(&[row("a", 10), row("b", 10), row("c", 10)], 0),
            1
        );
        assert_eq!(f.take_rows(&[row("c", 10), row("d", 11)], 0), 1);
        assert_eq!(f.watermark_ms, 11);
        assert_eq!(f.read, 4);
        assert_eq!(f.due(0).len(), 4);
    }

    #[test]
    fn each_revocation_is_dispatched_twice_and_failures_are_retried() {
        let mut f = Feed::default();
        f.take_rows(&[row("a", 10)], 100);
        let first = f.due(100);
        assert_eq!(first.len(), 1);
        f.dispatched(first[0].clone(), Err(()), 100);
        assert_eq!(f.next_due(), Some(100 + RETRY_MS));
        let again = f.due(100 + RETRY_MS);
        f.dispatched(again[0].clone(), Ok(3), 100 + RETRY_MS);
        assert_eq!(f.next_due(), Some(100 + RETRY_MS + SECOND_ROUND_MS));
        let second = f.due(u64::MAX);
        assert!(second[0].last);
        f.dispatched(second[0].clone(), Ok(1), 0);
        assert_eq!(f.next_due(), None);
        assert_eq!((f.closed, f.failures), (4, 1));
    }

    #[test]
    fn the_queue_is_bounded_and_counts_what_it_shed() {
        let mut f = Feed::default();
        let rows: Vec<Row> = (0..MAX_PENDING as u64 + 5)
            .map(|i| row(&format!("h{i}"), i))
            .collect();
        f.take_rows(&rows, 0);
        assert_eq!(f.pending.len(), MAX_PENDING);
        assert_eq!(f.shed, 5);
    }
}
