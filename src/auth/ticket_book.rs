//! A user's tickets, kept by the user's home: the issue rate limit and the
//! nonces already redeemed. One object per user serializes every request, so both are
//! exact under concurrent requests (the platform's KV read-then-write is not), and a ticket
//! works once (the platform's can be replayed for its whole ~35 s window).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::ticket::{SKEW_MS, TTL_MS};
use super::TokenRef;

/// Tickets one user may be issued per fixed one-minute bucket (the platform's limit).
pub const TICKETS_PER_MINUTE: u32 = 10;
const BUCKET_MS: u64 = 60_000;
/// Nonces remembered at once. Our own issue rate keeps a user far below this; only tickets
/// minted elsewhere (the platform's server during a cutover) could fill it.
pub const MAX_REDEEMED: usize = 1_000;

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct TicketBook {
    /// `floor(now_ms / 60000)` of the current bucket and the tickets issued in it.
    bucket: u64,
    issued: u32,
    /// Redeemed nonce -> when it can be forgotten (its ticket's last valid moment).
    redeemed: BTreeMap<String, u64>,
    /// Issued nonce -> the token the ticket was issued for, and when to forget it. At most
    /// [`TICKETS_PER_MINUTE`] a minute are added, each kept for a ticket's life.
    bound: BTreeMap<String, (TokenRef, u64)>,
}

/// The answer to a ticket request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "result", rename_all = "camelCase")]
pub enum Issue {
    Allowed {
        remaining: u32,
    },
    #[serde(rename_all = "camelCase")]
    Limited {
        retry_after_s: u32,
    },
}

/// The answer to a redemption.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum Redeem {
    /// First use: the connect may proceed.
    Fresh,
    /// This nonce was already used.
    Replayed,
    /// Too many live tickets for this user; retry in a few seconds.
    Full,
}

impl TicketBook {
    /// Counts a ticket request against the current minute; an allowed ticket remembers the
    /// token it is issued for under its nonce, for its redemption.
    pub fn issue_bound(&mut self, now_ms: u64, nonce: &str, token: TokenRef) -> Issue {
        let issue = self.issue(now_ms);
        if matches!(issue, Issue::Allowed { .. }) {
            self.bound.retain(|_, (_, forget_at)| *forget_at >= now_ms);
            let forget_at = now_ms.saturating_add(TTL_MS + SKEW_MS);
            self.bound.insert(nonce.to_owned(), (token, forget_at));
        }
        issue
    }

    /// The token a nonce's ticket was issued for, once (tickets minted elsewhere have none).
    pub fn take_bound(&mut self, nonce: &str) -> Option<TokenRef> {
        self.bound.remove(nonce).map(|(t, _)| t)
    }

    /// Counts a ticket request against the current minute.
    pub fn issue(&mut self, now_ms: u64) -> Issue {
        let bucket = now_ms / BUCKET_MS;
        if bucket != self.bucket {
            self.bucket = bucket;
            self.issued = 0;
        }
        if self.issued >= TICKETS_PER_MINUTE {
            let end = (bucket + 1) * BUCKET_MS;
            // ceil((bucket_end - now) / 1000), in 1..=60 like the platform's.
            let s = end.saturating_sub(now_ms).div_ceil(1000).clamp(1, 60);
            return Issue::Limited {
                retry_after_s: u32::try_from(s).unwrap_or(60),
            };
        }
        self.issued += 1;
        Issue::Allowed {
            remaining: TICKETS_PER_MINUTE - self.issued,
        }
    }

    /// Marks a verified ticket's nonce used. `exp_ms` is the ticket's expiry: after it
    /// (plus the skew allowance) the ticket is refused anyway and the nonce is forgotten.
    pub fn redeem(&mut self, nonce: &str, exp_ms: u64, now_ms: u64) -> Redeem {
        self.redeemed.retain(|_, forget_at| *forget_at >= now_ms);
        if self.redeemed.contains_key(nonce) {
            return Redeem::Replayed;
        }
        if self.redeemed.len() >= MAX_REDEEMED {
            return Redeem::Full;
        }
        self.redeemed
            .insert(nonce.to_owned(), exp_ms.saturating_add(SKEW_MS));
        Redeem::Fresh
    }

    pub fn remembered(&self) -> usize {
        self.redeemed.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ten_per_minute_then_429_with_the_time_to_the_next_bucket() {
        let mut b = TicketBook::default();
        let t0 = 120_000 + 15_500; // 15.5 s into a bucket
        for i in 0..10 {
            assert_eq!(b.issue(t0), Issue::Allowed { remaining: 9 - i });
        }
        assert_eq!(b.issue(t0), Issue::Limited { retry_after_s: 45 });
        assert_eq!(b.issue(t0 + 44_000), Issue::Limited { retry_after_s: 1 });
        // The next bucket starts fresh.
        assert_eq!(b.issue(180_000), Issue::Allowed { remaining: 9 });
    }

    #[test]
    fn a_nonce_works_once_and_is_forgotten_after_its_window() {
        let mut b = TicketBook::default();
        assert_eq!(b.redeem("n1", 30_000, 1_000), Redeem::Fresh);
        assert_eq!(b.redeem("n1", 30_000, 2_000), Redeem::Replayed);
        assert_eq!(b.redeem("n2", 30_000, 2_000), Redeem::Fresh);
        // Past exp + skew the ticket itself is refused, so its nonce can go.
        assert_eq!(b.redeem("n3", 60_000, 35_001), Redeem::Fresh);
        assert_eq!(b.remembered(), 1);
    }

    #[test]
    fn the_nonce_store_is_bounded() {
        let mut b = TicketBook::default();
        for i in 0..MAX_REDEEMED {
            assert_eq!(b.redeem(&format!("n{i}"), 30_000, 0), Redeem::Fresh);
        }
        assert_eq!(b.redeem("one-more", 30_000, 0), Redeem::Full);
        assert_eq!(b.redeem("n0", 30_000, 0), Redeem::Replayed);
        assert_eq!(b.redeem("later", 30_000, 40_000), Redeem::Fresh);
    }

    #[test]
    fn a_ticket_carries_the_token_it_was_issued_for_once() {
        let mut b = TicketBook::default();
        let t = TokenRef {
            token_hash: "ab".into(),
            expires_at: Some(9),
        };
        assert!(matches!(
            b.issue_bound(0, "n1", t.clone()),
            Issue::Allowed { .. }
        ));
        assert_eq!(b.take_bound("n1"), Some(t.clone()));
        assert_eq!(b.take_bound("n1"), None);
        // Forgotten after a ticket's life; refused issues bind nothing.
        b.issue_bound(0, "n2", t.clone());
        b.issue_bound(TTL_MS + SKEW_MS + 1, "n3", t.clone());
        assert_eq!(b.take_bound("n2"), None);
        for i in 0..20 {
            b.issue_bound(TTL_MS + SKEW_MS + 1, &format!("x{i}"), t.clone());
        }
        assert!(b.bound.len() <= TICKETS_PER_MINUTE as usize);
    }
}
