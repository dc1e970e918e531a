//! Per-isolate caches: verified tokens, so a client's next request skips the signature check
//! and the revocation query, and (in the gateway) users' placements and stats answers.
//!
//! The token cache is stricter than the platform's (unbounded, and a hit skips expiry and
//! revocation): a hit is honoured only while the token's `exp` is in the future and for at
//! most [`RECHECK_MS`] after its revocation check, so a revoked token stops working within
//! that bound; at most [`CAPACITY`] tokens are kept, the oldest insert evicted first.
//!
//! Tokens are keyed by their text. That is sound because a token has exactly one spelling
//! that verifies (strict base64url, [`super::b64`]): only verified tokens are inserted, so a
//! re-spelled token can neither hit an entry nor add one.

use std::collections::{HashMap, VecDeque};

use super::TokenRef;

/// Entries kept per cache per isolate (a token entry is a few hundred bytes).
pub const CAPACITY: usize = 4096;
/// How stale a revocation may be: a cached token is checked again after this long.
pub const RECHECK_MS: u64 = 60_000;

/// A map of at most `capacity` entries; the oldest insert is evicted first.
#[derive(Debug)]
pub struct BoundedMap<V> {
    entries: HashMap<String, (V, u64)>,
    /// Insertion order; a slot whose generation no longer matches its entry is dead.
    order: VecDeque<(String, u64)>,
    capacity: usize,
    generation: u64,
}

impl<V> BoundedMap<V> {
    pub fn new(capacity: usize) -> Self {
        Self {
            entries: HashMap::new(),
            order: VecDeque::new(),
            capacity: capacity.max(1),
            generation: 0,
        }
    }

    pub fn get(&self, key: &str) -> Option<&V> {
        self.entries.get(key).map(|(v, _)| v)
    }

    pub fn get_mut(&mut self, key: &str) -> Option<&mut V> {
        self.entries.get_mut(key).map(|(v, _)| v)
    }

    pub fn remove(&mut self, key: &str) -> Option<V> {
        self.entries.remove(key).map(|(v, _)| v)
    }

    pub fn insert(&mut self, key: &str, value: V) {
        self.generation += 1;
        let generation = self.generation;
        self.entries.insert(key.to_owned(), (value, generation));
        self.order.push_back((key.to_owned(), generation));
        while self.entries.len() > self.capacity {
            let Some((old, g)) = self.order.pop_front() else {
                break;
            };
            if self.entries.get(&old).is_some_and(|(_, eg)| *eg == g) {
                self.entries.remove(&old);
            }
        }
        // Re-inserts leave dead slots behind; compact before they outgrow the map.
        if self.order.len() > 2 * self.capacity {
            let entries = &self.entries;
            self.order
                .retain(|(k, g)| entries.get(k).is_some_and(|(_, eg)| eg == g));
        }
    }

    pub fn keys(&self) -> impl Iterator<Item = &String> {
        self.entries.keys()
    }

    pub fn values(&self) -> impl Iterator<Item = &V> {
        self.entries.values().map(|(v, _)| v)
    }

    pub fn values_mut(&mut self) -> impl Iterator<Item = &mut V> {
        self.entries.values_mut().map(|(v, _)| v)
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

/// What the token cache knows of a token: its user and reference either way.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Lookup {
    Hit(String, TokenRef),
    /// Verified, unexpired, but its revocation check is older than the bound.
    Recheck(String, TokenRef),
    Miss,
}

#[derive(Debug, Clone)]
struct TokenEntry {
    user_id: String,
    /// The token's reference (its revocation hash, `exp`), hashed once per verification.
    token: TokenRef,
    checked_ms: u64,
}

impl TokenEntry {
    /// At its `exp`, as verification refuses it.
    fn expired(&self, now_ms: u64) -> bool {
        self.token.expires_at.is_some_and(|at| now_ms >= at)
    }
}

#[derive(Debug)]
pub struct TokenCache {
    map: BoundedMap<TokenEntry>,
    recheck_ms: u64,
}

impl Default for TokenCache {
    fn default() -> Self {
        Self::new(CAPACITY, RECHECK_MS)
    }
}

impl TokenCache {
    pub fn new(capacity: usize, recheck_ms: u64) -> Self {
        Self {
            map: BoundedMap::new(capacity),
            recheck_ms,
        }
    }

    /// A cached token at `now_ms`: a hit while unexpired and checked for revocation less
    /// than the recheck bound ago; past that bound, due for the revocation check only (its
    /// signature was verified when it was cached and cannot change); expired, dropped.
    pub fn get(&mut self, token: &str, now_ms: u64) -> Lookup {
        let Some(e) = self.map.get(token) else {
            return Lookup::Miss;
        };
        if e.expired(now_ms) {
            self.map.remove(token);
            return Lookup::Miss;
        }
        let (user, r) = (e.user_id.clone(), e.token.clone());
        if now_ms.saturating_sub(e.checked_ms) >= self.recheck_ms {
            Lookup::Recheck(user, r)
        } else {
            Lookup::Hit(user, r)
        }
    }

    /// Keeps a verified token with its reference (hashed once, by the caller).
    pub fn insert(&mut self, token: &str, user_id: &str, r: TokenRef, now_ms: u64) {
        self.map.insert(
            token,
            TokenEntry {
                user_id: user_id.to_owned(),
                token: r,
                checked_ms: now_ms,
            },
        );
    }

    /// Tokens that ride another token's revocation query: the revocation hashes of at most
    /// `max` unexpired tokens (not `except`) checked half the bound ago or longer, the
    /// longest ago first. One query then rechecks a batch, so an isolate holding n tokens
    /// asks about n / batch times per bound instead of n times, and no token waits longer
    /// than the bound.
    pub fn riders(&self, now_ms: u64, except: &str, max: usize) -> Vec<String> {
        let half = self.recheck_ms / 2;
        let mut due: Vec<(u64, &str)> = self
            .map
            .values()
            .filter(|e| {
                e.token.token_hash != except
                    && now_ms.saturating_sub(e.checked_ms) >= half
                    && !e.expired(now_ms)
            })
            .map(|e| (e.checked_ms, e.token.token_hash.as_str()))
            .collect();
        due.sort_unstable();
        due.into_iter()
            .take(max)
            .map(|(_, h)| h.to_owned())
            .collect()
    }

    /// The answer to one revocation query that asked about `asked` (hashes) at `now_ms`:
    /// the tokens in `revoked` are forgotten (their next use is verified and checked again,
    /// and refused), the others passed.
    pub fn checked(&mut self, asked: &[String], revoked: &[String], now_ms: u64) {
        for h in revoked {
            self.forget_hash(h);
        }
        let asked: std::collections::HashSet<&str> = asked.iter().map(String::as_str).collect();
        for e in self.map.values_mut() {
            if asked.contains(e.token.token_hash.as_str()) {
                e.checked_ms = e.checked_ms.max(now_ms);
            }
        }
    }

    /// Drops every cached token whose revocation hash is `hash`.
    pub fn forget_hash(&mut self, hash: &str) {
        let gone: Vec<String> = self
            .map
            .keys()
            .filter(|t| self.map.get(t).is_some_and(|e| e.token.token_hash == hash))
            .cloned()
            .collect();
        for t in gone {
            self.map.remove(&t);
        }
    }

    pub fn len(&self) -> usize {
        self.map.len()
    }

    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }
}

/// Answers with the time they arrived, at most `capacity` of them (oldest insert evicted
/// first): the gateway's stats answers per user.
#[derive(Debug)]
pub struct TtlCache<V> {
    map: BoundedMap<(V, u64)>,
}

impl<V: Clone> TtlCache<V> {
    pub fn new(capacity: usize) -> Self {
        Self {
            map: BoundedMap::new(capacity),
        }
    }

    /// The value for `key` if it arrived less than `ttl_ms` before `now_ms`.
    pub fn get(&self, key: &str, now_ms: u64, ttl_ms: u64) -> Option<V> {
        let (v, at_ms) = self.map.get(key)?;
        (now_ms.saturating_sub(*at_ms) < ttl_ms).then(|| v.clone())
    }

    /// Keeps `value`, arrived at `at_ms`.
    pub fn insert(&mut self, key: &str, at_ms: u64, value: V) {
        self.map.insert(key, (value, at_ms));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn user(l: Lookup) -> Option<String> {
        match l {
            Lookup::Hit(u, _) => Some(u),
            _ => None,
        }
    }

    #[test]
    fn hits_honour_exp_on_every_lookup() {
        let mut c = TokenCache::new(10, 600_000);
        c.insert("t", "alice", TokenRef::of("t", Some(100)), 0);
        assert_eq!(user(c.get("t", 99_999)).as_deref(), Some("alice"));
        // At exp, exactly as verification refuses it.
        assert_eq!(c.get("t", 100_000), Lookup::Miss);
        assert!(c.is_empty());
    }

    #[test]
    fn a_hit_answers_the_reference_of_the_verified_token() {
        let mut c = TokenCache::new(10, 60_000);
        c.insert("t", "alice", TokenRef::of("t", Some(100)), 0);
        c.insert("u", "bob", TokenRef::of("u", None), 0);
        assert_eq!(
            c.get("t", 1_000),
            Lookup::Hit("alice".into(), TokenRef::of("t", Some(100)))
        );
        // Forgetting by hash drops that token only.
        c.forget_hash(&TokenRef::of("t", None).token_hash);
        assert_eq!(c.get("t", 1_000), Lookup::Miss);
        assert_eq!(user(c.get("u", 1_000)).as_deref(), Some("bob"));
    }

    #[test]
    fn past_the_staleness_bound_only_revocation_is_checked_again() {
        let mut c = TokenCache::new(10, 60_000);
        c.insert("t", "alice", TokenRef::of("t", Some(1_000)), 1_000);
        assert_eq!(user(c.get("t", 60_999)).as_deref(), Some("alice"));
        let due = Lookup::Recheck("alice".into(), TokenRef::of("t", Some(1_000)));
        assert_eq!(c.get("t", 61_000), due);
        // Until the check passes, every lookup asks for it again.
        assert_eq!(c.get("t", 61_500), due);
        c.checked(&[TokenRef::of("t", None).token_hash], &[], 61_500);
        assert_eq!(user(c.get("t", 121_499)).as_deref(), Some("alice"));
        assert_eq!(c.get("t", 121_500), due);
        // A revoked token is forgotten: the next lookup verifies from scratch.
        c.forget_hash(&TokenRef::of("t", None).token_hash);
        assert_eq!(c.get("t", 121_500), Lookup::Miss);
        // Expiry wins over a due recheck.
        c.insert("t", "alice", TokenRef::of("t", Some(1_000)), 1_000);
        assert_eq!(c.get("t", 1_000_000), Lookup::Miss);
    }

    #[test]
    fn one_query_rechecks_the_tokens_past_half_the_bound() {
        let mut c = TokenCache::new(10, 60_000);
        let h = |t: &str| TokenRef::of(t, None).token_hash;
        c.insert("a", "alice", TokenRef::of("a", None), 0);
        c.insert("b", "bob", TokenRef::of("b", None), 20_000);
        c.insert("c", "carol", TokenRef::of("c", None), 40_000);
        c.insert("x", "xavier", TokenRef::of("x", Some(50)), 0);
        // At 60 s `a` is due; `b` (40 s ago) rides its query, `c` (20 s ago) does not, nor
        // the expired `x`, nor `a` itself.
        assert!(matches!(c.get("a", 60_000), Lookup::Recheck(..)));
        assert_eq!(c.riders(60_000, &h("a"), 10), vec![h("b")]);
        assert!(c.riders(60_000, &h("a"), 0).is_empty());
        // The longest-unchecked ride first.
        assert_eq!(c.riders(71_000, "", 2), vec![h("a"), h("b")]);
        // The answer: `b` was revoked (forgotten: its next use verifies and asks again), `a`
        // passed.
        c.checked(&[h("a"), h("b")], &[h("b")], 60_000);
        assert_eq!(user(c.get("a", 60_001)).as_deref(), Some("alice"));
        assert_eq!(c.get("b", 60_001), Lookup::Miss);
        // Riding never delays a token past the bound: `c` is due at its own 60 s.
        assert!(matches!(c.get("c", 100_000), Lookup::Recheck(..)));
        // An answer older than a newer check does not turn the clock back.
        c.checked(&[h("c")], &[], 100_000);
        c.checked(&[h("c")], &[], 90_000);
        assert!(matches!(c.get("c", 159_999), Lookup::Hit(..)));
        assert!(matches!(c.get("c", 160_000), Lookup::Recheck(..)));
    }

    #[test]
    fn the_map_is_bounded_and_evicts_the_oldest() {
        let mut m = BoundedMap::new(3);
        for (i, k) in ["a", "b", "c", "d"].iter().enumerate() {
            m.insert(k, i);
        }
        assert_eq!(m.len(), 3);
        assert_eq!(m.get("a"), None);
        assert_eq!(m.get("d"), Some(&3));
        // Re-inserting many times never grows the queue without bound, and a re-insert
        // makes the key the newest.
        for i in 0..100 {
            m.insert("b", 10 + i);
        }
        assert!(m.order.len() <= 6, "{}", m.order.len());
        assert_eq!(m.get("b"), Some(&109));
        m.insert("e", 0);
        assert_eq!(m.get("c"), None);
        assert_eq!(m.get("b"), Some(&109));
        assert_eq!(m.len(), 3);
    }

    #[test]
    fn a_ttl_cache_answers_only_within_its_ttl_and_per_key() {
        let mut c = TtlCache::new(2);
        c.insert("alice", 1_000, 1);
        assert_eq!(c.get("alice", 1_099, 100), Some(1));
        assert_eq!(c.get("alice", 1_100, 100), None, "100 ms after it arrived");
        assert_eq!(
            c.get("bob", 1_050, 100),
            None,
            "another key never sees alice's value"
        );
        // A clock that went back counts as age 0, not as a huge age or a panic.
        assert_eq!(c.get("alice", 500, 100), Some(1));
        c.insert("bob", 1_000, 2);
        c.insert("carol", 1_000, 3);
        assert_eq!(
            c.get("alice", 1_010, 100),
            None,
            "the oldest insert is evicted past capacity"
        );
        c.insert("dave", 1_000, 4);
        assert_eq!(c.get("dave", 1_000, 0), None, "a TTL of 0 answers nothing");
    }
}
