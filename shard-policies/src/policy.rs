//! The [`ShardPolicy`] trait, the connection it places, and the four policies.

use crate::candidate::Candidates;
use crate::fanout::{fanout, KnownShard};
use crate::hash::xxh64;
use crate::name::ShardKey;
use crate::rotation::Rotation;
use crate::spread::{default_fill, SpreadPlan};
use core::fmt;

pub use crate::name::MAX_SHARDS;

/// What kind of socket is being placed (`clientType` on the upgrade request).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ClientType {
    /// `user-scoped` (the default): follows the user, not a session or machine.
    UserScoped,
    /// `session-scoped`: belongs to one `sessionId`.
    SessionScoped,
    /// `machine-scoped`: belongs to one `machineId`.
    MachineScoped,
}

impl ClientType {
    /// The wire name: `user-scoped`, `session-scoped` or `machine-scoped`.
    pub fn as_str(&self) -> &'static str {
        match self {
            ClientType::UserScoped => "user-scoped",
            ClientType::SessionScoped => "session-scoped",
            ClientType::MachineScoped => "machine-scoped",
        }
    }

    /// Parses a wire name; `None` for anything else.
    pub fn from_wire(name: &str) -> Option<Self> {
        match name {
            "user-scoped" => Some(ClientType::UserScoped),
            "session-scoped" => Some(ClientType::SessionScoped),
            "machine-scoped" => Some(ClientType::MachineScoped),
            _ => None,
        }
    }
}

/// Everything a policy may use to place one new connection. Ids are expected to be valid
/// ([`crate::validate_id`]); time is passed in because the crate reads no clock.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConnectionRequest<'a> {
    /// The user (token `sub`). Placement does not need it; names do.
    pub user_id: &'a str,
    /// The user's tier connection limit (drives `shards=auto`).
    pub tier_limit: u32,
    /// `SHARD_MAX_CONNECTIONS`, the per-shard cap (drives `shards=auto`; 0 is read as 1).
    pub shard_max_connections: u32,
    /// The socket's kind.
    pub client_type: ClientType,
    /// `sessionId`, required by the gateway for session-scoped sockets.
    pub session_id: Option<&'a str>,
    /// `machineId`, required by the gateway for machine-scoped sockets.
    pub machine_id: Option<&'a str>,
    /// The new connection's id: the key every hashed placement hashes.
    pub connection_id: &'a str,
    /// Current time, Unix ms (drives rotation epochs).
    pub now_ms: u64,
    /// The user's spread level as the caller last learned it from the user's home shard
    /// (0, the home alone, when unknown): how many hash shards `shards=auto` uses (see
    /// [`crate::spread`]).
    pub spread: u32,
}

/// A placement strategy: where a new connection may go, and which shards a fan-out must
/// reach.
pub trait ShardPolicy {
    /// The candidate shards for a new connection, preferred first, then the spill order.
    /// Deterministic in the request; never empty.
    fn candidates<'a>(&self, req: &ConnectionRequest<'a>) -> Candidates<'a>;

    /// The shards a broadcast or stats fan-out must reach, given what the user's directory
    /// knows. The default (every shard with connections or draining, whoever placed
    /// them) is right for every policy here: it keeps a previous policy's shards reachable.
    fn fanout<'k>(&self, known: &'k [KnownShard]) -> Vec<&'k KnownShard> {
        fanout(known)
    }
}

/// A hashed set's size: a fixed N in `1..=1024`, or `auto`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ShardCount(Option<u32>);

impl ShardCount {
    /// `auto`: `ceil(tier_limit / shard_max_connections)`, at least 1, at most 1024.
    pub const AUTO: ShardCount = ShardCount(None);

    /// A fixed count; `None` outside `1..=1024`.
    pub fn fixed(n: u32) -> Option<Self> {
        (1..=MAX_SHARDS).contains(&n).then_some(ShardCount(Some(n)))
    }

    /// The fixed count, or `None` for `auto`.
    pub fn as_fixed(&self) -> Option<u32> {
        self.0
    }

    /// Is this `auto`?
    pub fn is_auto(&self) -> bool {
        self.0.is_none()
    }

    /// The number of shards for a user: the fixed N, or for `auto`
    /// `ceil(tier_limit / max(shard_max_connections, 1))` clamped to `1..=1024`.
    #[inline]
    pub fn resolve(&self, tier_limit: u32, shard_max_connections: u32) -> u32 {
        match self.0 {
            Some(n) => n,
            None => tier_limit
                .div_ceil(shard_max_connections.max(1))
                .clamp(1, MAX_SHARDS),
        }
    }
}

impl fmt::Display for ShardCount {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            Some(n) => write!(f, "{n}"),
            None => f.write_str("auto"),
        }
    }
}

/// `single`: every connection of a user on `cm:{user}`. One candidate, no spill: the
/// seed's architecture, the baseline that hits the per-object cap.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct SinglePolicy;

impl ShardPolicy for SinglePolicy {
    #[inline]
    fn candidates<'a>(&self, _req: &ConnectionRequest<'a>) -> Candidates<'a> {
        Candidates::base(None)
    }
}

/// `hash`: N shards `cm:{user}:h{k}`, `k = jump(xxh64(connection_id), N)`; spills over all
/// N shards in a per-connection order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct HashPolicy {
    /// N, fixed or `auto`.
    pub shards: ShardCount,
}

impl ShardPolicy for HashPolicy {
    #[inline]
    fn candidates<'a>(&self, req: &ConnectionRequest<'a>) -> Candidates<'a> {
        hashed_or_filled(None, self.shards, req)
    }
}

/// Hash shards: `auto` fills the home first and spreads as the user grows; a fixed N spreads
/// over all N from the first socket.
fn hashed_or_filled<'a>(
    lead: Option<&'a str>,
    count: ShardCount,
    req: &ConnectionRequest<'a>,
) -> Candidates<'a> {
    let n = count.resolve(req.tier_limit, req.shard_max_connections);
    let hash = xxh64(req.connection_id.as_bytes());
    if count.is_auto() {
        Candidates::fill(lead, hash, req.spread, n)
    } else {
        Candidates::hashed(lead, hash, n)
    }
}

/// Where `session` puts the sockets that are not session-scoped.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Others {
    /// The user's base shard `cm:{user}` (shared with `single`).
    Base,
    /// Hash shards `cm:{user}:h{k}` over N (shared with `hash`).
    Hash(ShardCount),
}

/// `session`: a session-scoped socket goes to its session's shard `cm:{user}:s:{session}`;
/// the others (user- and machine-scoped, and session-scoped without a session id) go to
/// the user's base shard or hash shards.
///
/// A full session shard spills to the "others" shards (the base shard, or the hash shards
/// in the connection's spill order): the socket stays connected and still gets its
/// session's broadcasts, because fan-out reaches every shard and filters by tag there.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct SessionPolicy {
    /// Where non-session sockets go.
    pub others: Others,
}

impl ShardPolicy for SessionPolicy {
    #[inline]
    fn candidates<'a>(&self, req: &ConnectionRequest<'a>) -> Candidates<'a> {
        let lead = match req.client_type {
            ClientType::SessionScoped => req.session_id,
            ClientType::UserScoped | ClientType::MachineScoped => None,
        };
        match self.others {
            Others::Base => Candidates::base(lead),
            Others::Hash(count) => hashed_or_filled(lead, count, req),
        }
    }
}

/// `rotate`: connections go to the current epoch's shard
/// `cm:{user}:e{epoch}p{period}d{drain}` (or its hash shards `…:h{k}` when `shards` is set);
/// older epochs drain over `drain` (see [`Rotation`]). Without `shards` there is one
/// candidate and no spill; with `shards` the spill order covers the epoch's N shards.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct RotatePolicy {
    /// The epoch schedule.
    pub rotation: Rotation,
    /// Hash shards per epoch, if composed with hashing.
    pub shards: Option<ShardCount>,
}

impl ShardPolicy for RotatePolicy {
    #[inline]
    fn candidates<'a>(&self, req: &ConnectionRequest<'a>) -> Candidates<'a> {
        let epoch = self.rotation.epoch_at(req.now_ms);
        let hash = self.shards.map(|count| {
            let n = count.resolve(req.tier_limit, req.shard_max_connections);
            (xxh64(req.connection_id.as_bytes()), n, count.is_auto())
        });
        match hash {
            Some((h, n, true)) => Candidates::epoch_spread(self.rotation, epoch, h, req.spread, n),
            Some((h, n, false)) => Candidates::epoch(self.rotation, epoch, Some((h, n))),
            None => Candidates::epoch(self.rotation, epoch, None),
        }
    }
}

/// A parsed `SHARD_POLICY`: one of the four policies with its parameters. Parse it with
/// [`str::parse`] (see [`crate::grammar`]); its `Display` is the canonical string.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PolicyConfig {
    /// `single`
    Single(SinglePolicy),
    /// `hash:shards=N|auto`
    Hash(HashPolicy),
    /// `session[:others=base|hash[,shards=N|auto]]`
    Session(SessionPolicy),
    /// `rotate:period=D,drain=D[,shards=N|auto]`
    Rotate(RotatePolicy),
}

impl PolicyConfig {
    /// The policy's name: `single`, `hash`, `session` or `rotate`.
    pub fn name(&self) -> &'static str {
        match self {
            PolicyConfig::Single(_) => "single",
            PolicyConfig::Hash(_) => "hash",
            PolicyConfig::Session(_) => "session",
            PolicyConfig::Rotate(_) => "rotate",
        }
    }

    /// How a user of this tier spreads, for the policies that fill before spreading
    /// (`shards=auto`); `None` when placement does not depend on the user's size.
    pub fn spread_plan(&self, tier_limit: u32, shard_max_connections: u32) -> Option<SpreadPlan> {
        let (count, home_holds) = match self {
            PolicyConfig::Hash(HashPolicy { shards }) => (*shards, true),
            PolicyConfig::Session(SessionPolicy {
                others: Others::Hash(count),
            }) => (*count, true),
            PolicyConfig::Rotate(RotatePolicy {
                shards: Some(count),
                ..
            }) => (*count, false),
            _ => return None,
        };
        count.is_auto().then(|| SpreadPlan {
            max: count.resolve(tier_limit, shard_max_connections),
            fill: default_fill(shard_max_connections),
            home_holds,
        })
    }

    /// Whether this policy may place a socket on the shard `key`: the shards a run-time
    /// switch to this policy leaves in place; the others drain. The home (`Base`) is placed
    /// by `single`, `session:others=base` and every `shards=auto` policy but `rotate` (they
    /// fill it first); a fixed `shards=N` places hash shards `0..N` only; `rotate` places
    /// its own schedule's epochs (older ones drain by themselves).
    pub fn places<S>(&self, key: &ShardKey<S>) -> bool {
        let hash_fits = |count: &ShardCount, k: u32| count.as_fixed().is_none_or(|n| k < n);
        match (self, key) {
            (PolicyConfig::Single(_), ShardKey::Base) => true,
            (PolicyConfig::Hash(HashPolicy { shards }), ShardKey::Base) => shards.is_auto(),
            (PolicyConfig::Hash(HashPolicy { shards }), ShardKey::Hash { k }) => {
                hash_fits(shards, *k)
            }
            (PolicyConfig::Session(_), ShardKey::Session(_)) => true,
            (PolicyConfig::Session(SessionPolicy { others }), ShardKey::Base) => match others {
                Others::Base => true,
                Others::Hash(count) => count.is_auto(),
            },
            (
                PolicyConfig::Session(SessionPolicy {
                    others: Others::Hash(count),
                }),
                ShardKey::Hash { k },
            ) => hash_fits(count, *k),
            (
                PolicyConfig::Rotate(RotatePolicy { rotation, shards }),
                ShardKey::Epoch {
                    rotation: r, hash, ..
                },
            ) => {
                r == rotation
                    && match (shards, hash) {
                        (None, None) => true,
                        (Some(count), Some(k)) => hash_fits(count, *k),
                        _ => false,
                    }
            }
            _ => false,
        }
    }

    /// The rotation schedule, for `rotate`.
    pub fn rotation(&self) -> Option<Rotation> {
        match self {
            PolicyConfig::Rotate(r) => Some(r.rotation),
            _ => None,
        }
    }
}

impl ShardPolicy for PolicyConfig {
    #[inline]
    fn candidates<'a>(&self, req: &ConnectionRequest<'a>) -> Candidates<'a> {
        match self {
            PolicyConfig::Single(p) => p.candidates(req),
            PolicyConfig::Hash(p) => p.candidates(req),
            PolicyConfig::Session(p) => p.candidates(req),
            PolicyConfig::Rotate(p) => p.candidates(req),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hash::shard_index;

    /// Every shard a policy's candidates name is one it places, for every client type,
    /// spread level and a span of epochs; and what a switch drains is what it must.
    #[test]
    fn a_policy_places_every_candidate_it_names() {
        let policies = [
            "single",
            "hash:shards=auto",
            "hash:shards=4",
            "session",
            "session:others=hash",
            "session:others=hash,shards=3",
            "rotate:period=20s,drain=4s",
            "rotate:period=20s,drain=4s,shards=auto",
            "rotate:period=20s,drain=4s,shards=2",
        ];
        for text in policies {
            let p: PolicyConfig = text.parse().unwrap();
            for i in 0..200u32 {
                let conn = format!("conn-{i}");
                let ct = [
                    ClientType::UserScoped,
                    ClientType::SessionScoped,
                    ClientType::MachineScoped,
                ][i as usize % 3];
                let mut r = req(ct, Some("sess-1"), &conn);
                r.spread = i % 5;
                r.now_ms = u64::from(i) * 7_000;
                for key in p.candidates(&r) {
                    assert!(p.places(&key), "{text} names {key:?} but does not place it");
                }
            }
        }
        let p = |t: &str| t.parse::<PolicyConfig>().unwrap();
        let rot: Rotation = "rotate:period=20s,drain=4s"
            .parse::<PolicyConfig>()
            .unwrap()
            .rotation()
            .unwrap();
        // single -> hash:shards=auto moves nothing; back drains the hash shards.
        assert!(p("hash:shards=auto").places(&ShardKey::<&str>::Base));
        assert!(!p("single").places(&ShardKey::<&str>::Hash { k: 0 }));
        assert!(!p("hash:shards=4").places(&ShardKey::<&str>::Hash { k: 4 }));
        assert!(!p("hash:shards=4").places(&ShardKey::<&str>::Base));
        assert!(!p("single").places(&ShardKey::Session("s")));
        let epoch = ShardKey::<&str>::Epoch {
            rotation: rot,
            epoch: 3,
            hash: None,
        };
        assert!(p("rotate:period=20s,drain=4s").places(&epoch));
        assert!(!p("rotate:period=30s,drain=4s").places(&epoch));
        assert!(!p("rotate:period=20s,drain=4s").places(&ShardKey::<&str>::Base));
        assert!(!p("hash:shards=auto").places(&epoch));
    }

    fn req<'a>(
        client_type: ClientType,
        session_id: Option<&'a str>,
        conn: &'a str,
    ) -> ConnectionRequest<'a> {
        ConnectionRequest {
            user_id: "alice",
            tier_limit: 500,
            shard_max_connections: 200,
            client_type,
            session_id,
            machine_id: None,
            connection_id: conn,
            now_ms: 1_760_000_123_456,
            spread: 0,
        }
    }

    fn keys<'a>(p: &impl ShardPolicy, r: &ConnectionRequest<'a>) -> Vec<ShardKey<&'a str>> {
        p.candidates(r).collect()
    }

    #[test]
    fn client_type_wire_names_round_trip() {
        for t in [
            ClientType::UserScoped,
            ClientType::SessionScoped,
            ClientType::MachineScoped,
        ] {
            assert_eq!(ClientType::from_wire(t.as_str()), Some(t));
        }
        assert_eq!(ClientType::from_wire("user"), None);
    }

    #[test]
    fn shard_count_resolves_auto_from_the_tier() {
        assert_eq!(ShardCount::AUTO.resolve(500, 200), 3);
        assert_eq!(ShardCount::AUTO.resolve(400, 200), 2);
        assert_eq!(ShardCount::AUTO.resolve(20, 200), 1);
        assert_eq!(ShardCount::AUTO.resolve(0, 200), 1);
        assert_eq!(ShardCount::AUTO.resolve(5, 0), 5);
        assert_eq!(ShardCount::AUTO.resolve(u32::MAX, 1), MAX_SHARDS);
        assert_eq!(ShardCount::fixed(8).map(|c| c.resolve(500, 200)), Some(8));
        assert_eq!(ShardCount::fixed(0), None);
        assert_eq!(ShardCount::fixed(1025), None);
        assert_eq!(
            ShardCount::fixed(1024).and_then(|c| c.as_fixed()),
            Some(1024)
        );
        assert!(ShardCount::AUTO.is_auto());
    }

    #[test]
    fn single_has_one_candidate() {
        let r = req(ClientType::SessionScoped, Some("s1"), "c1");
        assert_eq!(keys(&SinglePolicy, &r), vec![ShardKey::Base]);
        // The trait is object safe, so the gateway may hold a `Box<dyn ShardPolicy>`.
        let dynamic: &dyn ShardPolicy = &SinglePolicy;
        assert_eq!(
            dynamic.candidates(&r).collect::<Vec<_>>(),
            vec![ShardKey::Base]
        );
    }

    #[test]
    fn hash_prefers_the_jump_hash_shard_and_lists_all_n() {
        let p = HashPolicy {
            shards: ShardCount::fixed(16).unwrap(),
        };
        let r = req(ClientType::UserScoped, None, "conn-1");
        let v = keys(&p, &r);
        assert_eq!(v.len(), 16);
        assert_eq!(
            v[0],
            ShardKey::Hash {
                k: shard_index("conn-1", 16)
            }
        );
        // `auto` fills first: the home shard, then the ceil(500 / 200) = 3 hash shards.
        let auto = HashPolicy {
            shards: ShardCount::AUTO,
        };
        let v = keys(&auto, &r);
        assert_eq!(v.len(), 4);
        assert_eq!(v[0], ShardKey::Base);
        let spread = ConnectionRequest { spread: 3, ..r };
        let v = keys(&auto, &spread);
        assert_eq!(
            v[0],
            ShardKey::Hash {
                k: shard_index("conn-1", 3)
            }
        );
        assert_eq!(v[3], ShardKey::Base);
    }

    #[test]
    fn session_routes_session_sockets_to_their_shard_then_spills_to_others() {
        let base = SessionPolicy {
            others: Others::Base,
        };
        let r = req(ClientType::SessionScoped, Some("tab:1"), "c1");
        assert_eq!(
            keys(&base, &r),
            vec![ShardKey::Session("tab:1"), ShardKey::Base]
        );
        let u = req(ClientType::UserScoped, Some("tab:1"), "c1");
        assert_eq!(keys(&base, &u), vec![ShardKey::Base]);
        let m = req(ClientType::MachineScoped, None, "c1");
        assert_eq!(keys(&base, &m), vec![ShardKey::Base]);
        // A session-scoped socket without a session id is treated like the others.
        let no_id = req(ClientType::SessionScoped, None, "c1");
        assert_eq!(keys(&base, &no_id), vec![ShardKey::Base]);

        let hashed = SessionPolicy {
            others: Others::Hash(ShardCount::fixed(4).unwrap()),
        };
        let v = keys(&hashed, &r);
        assert_eq!(v.len(), 5);
        assert_eq!(v[0], ShardKey::Session("tab:1"));
        assert_eq!(
            v[1],
            ShardKey::Hash {
                k: shard_index("c1", 4)
            }
        );
        assert_eq!(
            keys(&hashed, &u)[0],
            ShardKey::Hash {
                k: shard_index("c1", 4)
            }
        );
    }

    #[test]
    fn rotate_uses_the_current_epoch() {
        let rotation = Rotation::try_new(600, 120).unwrap();
        let plain = RotatePolicy {
            rotation,
            shards: None,
        };
        let r = req(ClientType::UserScoped, None, "c1");
        let epoch = 1_760_000_123_456 / 600_000;
        assert_eq!(
            keys(&plain, &r),
            vec![ShardKey::Epoch {
                rotation,
                epoch,
                hash: None
            }]
        );
        let hashed = RotatePolicy {
            rotation,
            shards: Some(ShardCount::AUTO),
        };
        // `auto` spreads over as many of the epoch's 3 hash shards as the user needs.
        let v = keys(&hashed, &ConnectionRequest { spread: 3, ..r });
        assert_eq!(v.len(), 3);
        assert_eq!(
            v[0],
            ShardKey::Epoch {
                rotation,
                epoch,
                hash: Some(shard_index("c1", 3))
            }
        );
        assert_eq!(
            hashed.candidates(&r).preferred(),
            ShardKey::Epoch {
                rotation,
                epoch,
                hash: Some(0)
            }
        );
        let later = ConnectionRequest {
            now_ms: (epoch + 1) * 600_000,
            ..r
        };
        assert_eq!(
            plain.candidates(&later).preferred(),
            ShardKey::Epoch {
                rotation,
                epoch: epoch + 1,
                hash: None
            }
        );
    }

    #[test]
    fn config_dispatches_to_its_policy() {
        let r = req(ClientType::SessionScoped, Some("s"), "c9");
        let rotation = Rotation::try_new(60, 10).unwrap();
        let cases: [(PolicyConfig, Vec<ShardKey<&str>>); 4] = [
            (PolicyConfig::Single(SinglePolicy), keys(&SinglePolicy, &r)),
            (
                PolicyConfig::Hash(HashPolicy {
                    shards: ShardCount::AUTO,
                }),
                keys(
                    &HashPolicy {
                        shards: ShardCount::AUTO,
                    },
                    &r,
                ),
            ),
            (
                PolicyConfig::Session(SessionPolicy {
                    others: Others::Base,
                }),
                keys(
                    &SessionPolicy {
                        others: Others::Base,
                    },
                    &r,
                ),
            ),
            (
                PolicyConfig::Rotate(RotatePolicy {
                    rotation,
                    shards: None,
                }),
                keys(
                    &RotatePolicy {
                        rotation,
                        shards: None,
                    },
                    &r,
                ),
            ),
        ];
        for (cfg, expected) in cases {
            assert_eq!(keys(&cfg, &r), expected, "{}", cfg.name());
        }
        assert_eq!(
            PolicyConfig::Rotate(RotatePolicy {
                rotation,
                shards: None
            })
            .rotation(),
            Some(rotation)
        );
        assert_eq!(PolicyConfig::Single(SinglePolicy).rotation(), None);
    }

    #[test]
    fn fanout_default_reaches_shards_of_other_policies() {
        let known = [
            KnownShard {
                name: "cm:alice".into(),
                connections: 2,
                draining: false,
            },
            KnownShard {
                name: "cm:alice:h0".into(),
                connections: 0,
                draining: false,
            },
        ];
        let p = HashPolicy {
            shards: ShardCount::fixed(4).unwrap(),
        };
        assert_eq!(p.fanout(&known), vec![&known[0]]);
    }
}
