//! The message sidecache pods exchange on the pub/sub channel: invalidations and heartbeats,
//! as small JSON objects, stamped with the sender's pod id (so nobody applies their own twice)
//! and the publish time (for the lag histogram).

use serde::{Deserialize, Serialize};

pub const VERSION: u32 = 1;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    Invalidate,
    Heartbeat,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Message {
    pub v: u32,
    pub kind: Kind,
    /// The publishing pod.
    pub origin: String,
    /// Publish time, Unix microseconds.
    pub ts: u64,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tags: Vec<String>,
    /// Cache keys (hex) to drop.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub keys: Vec<String>,
    /// Drop everything; `ns` is the new L2 namespace.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub all: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ns: Option<u64>,
    /// Fetch the new values of dropped entries in the background.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub refresh: bool,
    /// A soft purge: mark the entries stale instead of dropping them (pods that do not know
    /// the field drop them, which is stricter, never wrong).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub soft: bool,
    /// What caused it: `write`, `event`, `admin`.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub source: String,
}

impl Message {
    pub fn heartbeat(origin: &str, ts: u64) -> Message {
        Message {
            v: VERSION,
            kind: Kind::Heartbeat,
            origin: origin.to_string(),
            ts,
            tags: Vec::new(),
            keys: Vec::new(),
            all: false,
            ns: None,
            refresh: false,
            soft: false,
            source: String::new(),
        }
    }

    pub fn encode(&self) -> String {
        serde_json::to_string(self).expect("a message serializes")
    }

    pub fn decode(payload: &[u8]) -> Result<Message, String> {
        let m: Message = serde_json::from_slice(payload).map_err(|e| e.to_string())?;
        if m.v != VERSION {
            return Err(format!("unknown message version {}", m.v));
        }
        Ok(m)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_rejects() {
        let mut m = Message::heartbeat("pod-a", 42);
        m.kind = Kind::Invalidate;
        m.tags = vec!["group:VIP".into()];
        m.source = "write".into();
        assert_eq!(Message::decode(m.encode().as_bytes()).unwrap(), m);
        assert!(Message::decode(b"not json").is_err());
        assert!(Message::decode(br#"{"v":9,"kind":"heartbeat","origin":"x","ts":1}"#).is_err());
    }
}
