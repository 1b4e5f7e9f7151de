//! The de-identified usage export: users appear only as keyed hashes of their
//! ids, under a per-cluster export key kept in the replicated state so every
//! node hashes a user the same way. Nothing here sees prompt or answer text,
//! and nothing here may ever return a raw user id.

use hmac::{Hmac, Mac};
use sha2::Sha256;

/// Bytes of the export key.
pub const EXPORT_KEY_BYTES: usize = 32;

/// A fresh random export key, hex-encoded (made once per cluster, by the
/// service, and stored through Raft: `apply` must not draw randomness).
pub fn new_export_key() -> String {
    hex(&bulkhead_proto::auth::random_bytes(EXPORT_KEY_BYTES))
}

/// The exported name of a user: `u_` and the first 16 hex characters of
/// HMAC-SHA256(key, user id). `key_hex` is the stored export key.
pub fn pseudonym(key_hex: &str, user_id: &str) -> String {
    let key = unhex(key_hex);
    // HMAC takes a key of any length; the invariant cannot fail.
    let mut mac =
        Hmac::<Sha256>::new_from_slice(&key).expect("HMAC-SHA256 accepts keys of any length");
    mac.update(user_id.as_bytes());
    let digest = hex(&mac.finalize().into_bytes());
    format!("u_{}", &digest[..16])
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex(s: &str) -> Vec<u8> {
    (0..s.len() / 2)
        .filter_map(|i| u8::from_str_radix(s.get(2 * i..2 * i + 2)?, 16).ok())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pseudonyms_are_stable_distinct_and_hide_the_id() {
        let key = new_export_key();
        assert_eq!(key.len(), 2 * EXPORT_KEY_BYTES);
        assert_ne!(key, new_export_key());
        let alice = pseudonym(&key, "alice@example.com");
        assert_eq!(alice, pseudonym(&key, "alice@example.com"));
        assert_ne!(alice, pseudonym(&key, "bob@example.com"));
        assert!(alice.starts_with("u_") && alice.len() == 18, "{alice}");
        assert!(alice[2..].chars().all(|c| c.is_ascii_hexdigit()));
        assert!(!alice.contains("alice"));
        // Another cluster's key names the same user differently.
        assert_ne!(alice, pseudonym(&new_export_key(), "alice@example.com"));
        // A user id that is itself hex does not pass through.
        assert!(!pseudonym(&key, "0123456789abcdef").contains("0123456789abcdef"));
    }
}
