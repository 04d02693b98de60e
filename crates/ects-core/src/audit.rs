//! The tamper-evident audit log: every accepted input and every effect is an entry that
//! carries the SHA-256 of its payload and of the entry before it. Changing, removing or
//! reordering any entry breaks the chain from there on, and [`verify`] says where.

use chrono::{DateTime, SecondsFormat, Utc};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// The hash the first entry of a chain points back to.
pub const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditEntry {
    /// 1, 2, 3... within the chain.
    pub seq: u64,
    pub time: DateTime<Utc>,
    /// Who caused it: a partner, an officer, a device, or `engine`.
    pub actor: String,
    /// What happened: `input.seal_event`, `effect.alert_raised`, ...
    pub action: String,
    /// SHA-256 of the payload (hex); the payload itself is kept beside the entry.
    pub payload_sha256: String,
    pub prev_hash: String,
    /// SHA-256 over all the fields above.
    pub hash: String,
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

pub fn sha256_hex(bytes: &[u8]) -> String {
    hex(&Sha256::digest(bytes))
}

fn entry_hash(
    seq: u64,
    time: &DateTime<Utc>,
    actor: &str,
    action: &str,
    payload: &str,
    prev: &str,
) -> String {
    let mut h = Sha256::new();
    // Length-prefixed fields: no two different entries hash the same text.
    for field in [
        seq.to_string().as_str(),
        time.to_rfc3339_opts(SecondsFormat::Micros, true).as_str(),
        actor,
        action,
        payload,
        prev,
    ] {
        h.update((field.len() as u64).to_be_bytes());
        h.update(field.as_bytes());
    }
    hex(&h.finalize())
}

impl AuditEntry {
    /// The entry that follows `prev` (or starts a chain).
    pub fn next(
        prev: Option<&AuditEntry>,
        time: DateTime<Utc>,
        actor: impl Into<String>,
        action: impl Into<String>,
        payload: &[u8],
    ) -> Self {
        let seq = prev.map_or(1, |p| p.seq + 1);
        let prev_hash = prev.map_or(GENESIS.to_owned(), |p| p.hash.clone());
        let actor = actor.into();
        let action = action.into();
        let payload_sha256 = sha256_hex(payload);
        let hash = entry_hash(seq, &time, &actor, &action, &payload_sha256, &prev_hash);
        Self {
            seq,
            time,
            actor,
            action,
            payload_sha256,
            prev_hash,
            hash,
        }
    }
}

/// Where a chain is broken.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("audit entry {seq}: {reason}")]
pub struct ChainError {
    pub seq: u64,
    pub reason: String,
}

/// Checks a whole chain, in order. With `payloads`, also that each payload still hashes
/// to what its entry recorded.
pub fn verify(entries: &[AuditEntry], payloads: Option<&[Vec<u8>]>) -> Result<(), ChainError> {
    verify_from(entries, payloads, 1, GENESIS).map(|_| ())
}

/// Checks a stretch of a chain that starts at `first_seq` after an entry whose hash is
/// `prev_hash` (`GENESIS` before the first): a long chain is checked a page at a time.
/// Returns the hash of the stretch's last entry (`prev_hash` when it is empty).
pub fn verify_from(
    entries: &[AuditEntry],
    payloads: Option<&[Vec<u8>]>,
    first_seq: u64,
    prev_hash: &str,
) -> Result<String, ChainError> {
    let mut prev_hash = prev_hash.to_owned();
    for (i, e) in entries.iter().enumerate() {
        let expected_seq = (i as u64).saturating_add(first_seq);
        let broken = |reason: String| ChainError { seq: e.seq, reason };
        if e.seq != expected_seq {
            return Err(broken(format!(
                "sequence {} where {expected_seq} was due (removed or reordered)",
                e.seq
            )));
        }
        if e.prev_hash != prev_hash {
            return Err(broken("does not point to the entry before it".into()));
        }
        let recomputed = entry_hash(
            e.seq,
            &e.time,
            &e.actor,
            &e.action,
            &e.payload_sha256,
            &e.prev_hash,
        );
        if recomputed != e.hash {
            return Err(broken(
                "its content was changed after it was written".into(),
            ));
        }
        if let Some(payload) = payloads.and_then(|p| p.get(i))
            && sha256_hex(payload) != e.payload_sha256
        {
            return Err(broken("its payload was changed".into()));
        }
        prev_hash = e.hash.clone();
    }
    Ok(prev_hash)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chain(n: u64) -> (Vec<AuditEntry>, Vec<Vec<u8>>) {
        let t0: DateTime<Utc> = "2026-03-14T08:00:00Z".parse().unwrap();
        let mut entries: Vec<AuditEntry> = Vec::new();
        let mut payloads = Vec::new();
        for i in 0..n {
            let payload = format!("{{\"n\":{i}}}").into_bytes();
            let e = AuditEntry::next(
                entries.last(),
                t0 + chrono::Duration::seconds(i as i64),
                "gt-sat",
                "input.seal_event",
                &payload,
            );
            entries.push(e);
            payloads.push(payload);
        }
        (entries, payloads)
    }

    #[test]
    fn an_intact_chain_verifies() {
        let (entries, payloads) = chain(5);
        assert_eq!(verify(&entries, Some(&payloads)), Ok(()));
        assert_eq!(entries[0].prev_hash, GENESIS);
    }

    #[test]
    fn a_changed_entry_is_found() {
        let (mut entries, payloads) = chain(5);
        entries[2].actor = "someone-else".into();
        assert_eq!(verify(&entries, Some(&payloads)).unwrap_err().seq, 3);
    }

    #[test]
    fn a_changed_payload_is_found() {
        let (entries, mut payloads) = chain(5);
        payloads[3] = b"{\"n\":99}".to_vec();
        assert_eq!(verify(&entries, Some(&payloads)).unwrap_err().seq, 4);
        assert_eq!(
            verify(&entries, None),
            Ok(()),
            "without payloads only the chain is checked"
        );
    }

    #[test]
    fn a_removed_or_reordered_entry_is_found() {
        let (mut entries, _) = chain(5);
        let removed = entries.remove(1);
        assert_eq!(verify(&entries, None).unwrap_err().seq, 3);
        entries.insert(1, removed);
        entries.swap(3, 4);
        assert_eq!(verify(&entries, None).unwrap_err().seq, 5);
    }

    #[test]
    fn a_rehashed_forgery_still_breaks_the_link() {
        let (mut entries, _) = chain(4);
        // A forger rewrites entry 2 and recomputes its own hash: entry 3 no longer points to it.
        let forged = AuditEntry::next(
            Some(&entries[0]),
            entries[1].time,
            "forger",
            "input.seal_event",
            b"{}",
        );
        entries[1] = forged;
        assert_eq!(verify(&entries, None).unwrap_err().seq, 3);
    }
}
