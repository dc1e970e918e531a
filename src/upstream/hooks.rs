//! Lifecycle hooks: `connected`, `disconnected`, `machine-online`, `machine-offline`, posted to
//! the upstream at least once. A hook is stored before it is sent and deleted after a 2xx
//! answer; a failure is retried with backoff. Its `id` is the idempotency key.

use serde::{Deserialize, Serialize};

use crate::protocol::{ClientType, SocketMeta};

/// Storage keys of pending hooks start with this.
pub const KEY_PREFIX: &str = "hook:";
/// First retry after 1 s, doubling, at most every 5 minutes...
const FIRST_RETRY_MS: u64 = 1_000;
const MAX_RETRY_MS: u64 = 300_000;
/// ...for a day, then the hook is dropped (and counted).
pub const GIVE_UP_AFTER_MS: u64 = 24 * 3600 * 1000;

/// A hook on its way, as stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Hook {
    pub id: String,
    /// The request body, JSON.
    pub body: String,
    pub attempts: u32,
    pub first_ms: u64,
    /// When it is next due.
    pub next_ms: u64,
}

impl Hook {
    fn new(id: String, body: serde_json::Value, now_ms: u64) -> Self {
        Self {
            id,
            body: body.to_string(),
            attempts: 0,
            first_ms: now_ms,
            next_ms: now_ms,
        }
    }

    pub fn key(&self) -> String {
        key_of(&self.id)
    }

    /// After a failed attempt: the next one, or `false` when the hook has waited long
    /// enough to be given up.
    pub fn failed(&mut self, now_ms: u64) -> bool {
        self.attempts = self.attempts.saturating_add(1);
        self.next_ms = now_ms.saturating_add(retry_wait_ms(self.attempts));
        self.next_ms.saturating_sub(self.first_ms) <= GIVE_UP_AFTER_MS
    }

    /// The stored form: JSON text, whose length is what the outbox's byte bound counts.
    pub fn stored(&self) -> String {
        // Strings and integers always serialize.
        serde_json::to_string(self).unwrap_or_default()
    }
}

/// The storage key of the hook with this id.
pub fn key_of(id: &str) -> String {
    format!("{KEY_PREFIX}{id}")
}

/// How long to wait after the `attempts`-th failure: 1 s, doubling, at most 5 minutes.
pub fn retry_wait_ms(attempts: u32) -> u64 {
    FIRST_RETRY_MS
        .saturating_mul(1u64 << attempts.saturating_sub(1).min(20))
        .min(MAX_RETRY_MS)
}

pub fn connected(sender: &SenderInfo, now_ms: u64) -> Hook {
    let id = format!("connected:{}", sender.connection_id);
    let body =
        serde_json::json!({"kind": "connected", "id": id, "sender": sender, "timestamp": now_ms});
    Hook::new(id, body, now_ms)
}

pub fn disconnected(sender: &SenderInfo, code: u16, now_ms: u64) -> Hook {
    let id = format!("disconnected:{}", sender.connection_id);
    let body = serde_json::json!({"kind": "disconnected", "id": id, "sender": sender, "code": code, "timestamp": now_ms});
    Hook::new(id, body, now_ms)
}

/// A machine's presence transition; `seq` (the routing view's version when it happened)
/// tells two transitions of one machine apart and stays the same across retries.
pub fn machine(user: &str, machine_id: &str, online: bool, seq: u64, now_ms: u64) -> Hook {
    let kind = if online {
        "machine-online"
    } else {
        "machine-offline"
    };
    let id = format!("{kind}:{user}:{machine_id}:{seq}");
    let body = serde_json::json!({"kind": kind, "id": id, "userId": user, "machineId": machine_id, "timestamp": now_ms});
    Hook::new(id, body, now_ms)
}

/// A socket as the upstream sees it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SenderInfo {
    pub user_id: String,
    pub tier: String,
    pub connection_id: String,
    pub client_type: ClientType,
    pub session_id: Option<String>,
    pub machine_id: Option<String>,
    pub shard: String,
}

impl SenderInfo {
    pub fn of(meta: &SocketMeta, shard: &str) -> Self {
        Self {
            user_id: meta.user_id.clone(),
            tier: meta.tier.clone(),
            connection_id: meta.connection_id.clone(),
            client_type: meta.client_type,
            session_id: meta.session_id.clone(),
            machine_id: meta.machine_id.clone(),
            shard: shard.to_owned(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::ClientType;

    fn sender() -> SenderInfo {
        SenderInfo {
            user_id: "u".into(),
            tier: "pro".into(),
            connection_id: "c9".into(),
            client_type: ClientType::MachineScoped,
            session_id: None,
            machine_id: Some("m1".into()),
            shard: "cm:u".into(),
        }
    }

    #[test]
    fn hooks_carry_an_idempotency_key() {
        let h = connected(&sender(), 5);
        assert_eq!(
            (h.id.as_str(), h.key().as_str()),
            ("connected:c9", "hook:connected:c9")
        );
        let v: serde_json::Value = serde_json::from_str(&h.body).unwrap();
        assert_eq!(
            (v["kind"].as_str(), v["id"].as_str()),
            (Some("connected"), Some("connected:c9"))
        );
        assert_eq!(v["sender"]["machineId"], "m1");
        let v: serde_json::Value =
            serde_json::from_str(&disconnected(&sender(), 1000, 6).body).unwrap();
        assert_eq!(v["code"], 1000);
        let m = machine("u", "m1", false, 42, 7);
        assert_eq!(m.id, "machine-offline:u:m1:42");
    }

    #[test]
    fn retries_back_off_to_five_minutes_and_give_up_after_a_day() {
        let mut h = connected(&sender(), 0);
        let mut waits = Vec::new();
        let mut now = 0;
        for _ in 0..12 {
            assert!(h.failed(now));
            waits.push(h.next_ms - now);
            now = h.next_ms;
        }
        assert_eq!(&waits[..5], &[1_000, 2_000, 4_000, 8_000, 16_000]);
        assert_eq!(waits[11], 300_000);
        let mut gave_up = false;
        for _ in 0..400 {
            if !h.failed(now) {
                gave_up = true;
                break;
            }
            now = h.next_ms;
        }
        assert!(gave_up && now <= GIVE_UP_AFTER_MS + 300_000, "{now}");
    }
}
