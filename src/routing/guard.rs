//! What one socket may send: a token bucket of frames, and a count of invalid ones. Pure: the
//! shard keeps one guard per open socket (memory only; a hibernated shard's sockets were idle,
//! so a fresh, full bucket after a wake costs nothing).
//!
//! Every frame that reaches the shard takes a token (the runtime answers the exact ping
//! itself, so those never count). A frame with no token left is dropped with an error frame
//! (at most one per second); a socket that keeps sending, `burst` frames dropped within a
//! minute, is closed with 1008. The defaults (`FRAME_RATE=50`/s, `FRAME_BURST=200`) are far
//! above the platform's own cadence: `session-alive` every 2 s, an app's RPC bursts of a few
//! dozen calls, streamed `message` events.

/// The window over which dropped and invalid frames add up.
pub const WINDOW_MS: u64 = 60_000;
/// At most one "slow down" error frame per this long.
const NOTICE_GAP_MS: u64 = 1_000;

/// The configured limits: tokens per second and the bucket's size.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    pub rate_per_s: u32,
    pub burst: u32,
    /// Invalid frames tolerated per window before the socket is closed.
    pub bad_frames: u32,
}

/// What to do with a frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Pass,
    /// Over the rate: drop it, and tell the client when `notify` (rate limited itself).
    Drop {
        notify: bool,
    },
    /// Over the rate for too long, or too many invalid frames: close with 1008.
    Close,
}

#[derive(Debug, Clone)]
pub struct SocketGuard {
    /// Tokens, in thousandths, so refills at any rate stay integral.
    milli_tokens: u64,
    refilled_at: u64,
    window_start: u64,
    dropped: u32,
    bad: u32,
    noticed_at: Option<u64>,
}

impl SocketGuard {
    pub fn new(limits: &Limits, now_ms: u64) -> Self {
        Self {
            milli_tokens: u64::from(limits.burst) * 1000,
            refilled_at: now_ms,
            window_start: now_ms,
            dropped: 0,
            bad: 0,
            noticed_at: None,
        }
    }

    fn roll_window(&mut self, now_ms: u64) {
        if now_ms.saturating_sub(self.window_start) > WINDOW_MS {
            self.window_start = now_ms;
            self.dropped = 0;
            self.bad = 0;
        }
    }

    /// A frame arrived at `now_ms`.
    pub fn frame(&mut self, limits: &Limits, now_ms: u64) -> Verdict {
        self.roll_window(now_ms);
        let elapsed = now_ms.saturating_sub(self.refilled_at);
        let cap = u64::from(limits.burst) * 1000;
        // rate tokens per second = rate thousandths per ms.
        self.milli_tokens = (self.milli_tokens + elapsed * u64::from(limits.rate_per_s)).min(cap);
        self.refilled_at = now_ms;
        if self.milli_tokens >= 1000 {
            self.milli_tokens -= 1000;
            return Verdict::Pass;
        }
        self.dropped = self.dropped.saturating_add(1);
        if self.dropped > limits.burst {
            return Verdict::Close;
        }
        let notify = self
            .noticed_at
            .is_none_or(|at| now_ms.saturating_sub(at) >= NOTICE_GAP_MS);
        if notify {
            self.noticed_at = Some(now_ms);
        }
        Verdict::Drop { notify }
    }

    /// An invalid frame: `true` when the socket has sent more than it is allowed this window.
    pub fn bad_frame(&mut self, limits: &Limits, now_ms: u64) -> bool {
        self.roll_window(now_ms);
        self.bad = self.bad.saturating_add(1);
        self.bad > limits.bad_frames
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const L: Limits = Limits {
        rate_per_s: 50,
        burst: 200,
        bad_frames: 10,
    };

    #[test]
    fn the_platforms_cadence_never_hits_the_limit() {
        let mut g = SocketGuard::new(&L, 0);
        // session-alive every 2 s for an hour, with a burst of 60 RPCs every minute.
        let mut now = 0;
        while now < 3_600_000 {
            assert_eq!(g.frame(&L, now), Verdict::Pass);
            if now % 60_000 == 0 {
                for _ in 0..60 {
                    assert_eq!(g.frame(&L, now), Verdict::Pass);
                }
            }
            now += 2_000;
        }
    }

    #[test]
    fn a_flood_is_dropped_then_closed() {
        let mut g = SocketGuard::new(&L, 0);
        for _ in 0..200 {
            assert_eq!(g.frame(&L, 0), Verdict::Pass);
        }
        assert_eq!(g.frame(&L, 0), Verdict::Drop { notify: true });
        assert_eq!(g.frame(&L, 0), Verdict::Drop { notify: false });
        // 20 ms later one token came back.
        assert_eq!(g.frame(&L, 20), Verdict::Pass);
        let mut v = Verdict::Pass;
        for _ in 0..300 {
            v = g.frame(&L, 20);
            if v == Verdict::Close {
                break;
            }
        }
        assert_eq!(v, Verdict::Close);
    }

    #[test]
    fn drops_are_forgiven_after_a_window() {
        let mut g = SocketGuard::new(&L, 0);
        for _ in 0..300 {
            g.frame(&L, 0);
        }
        // A minute of quiet refills the bucket and clears the count.
        assert_eq!(g.frame(&L, WINDOW_MS + 1), Verdict::Pass);
        assert_eq!(g.dropped, 0);
    }

    #[test]
    fn invalid_frames_add_up_per_window() {
        let mut g = SocketGuard::new(&L, 0);
        for _ in 0..10 {
            assert!(!g.bad_frame(&L, 0));
        }
        assert!(g.bad_frame(&L, 1));
        assert!(!g.bad_frame(&L, WINDOW_MS + 2));
    }
}
