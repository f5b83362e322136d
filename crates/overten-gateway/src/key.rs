//! [`KeyHash`]: a bearer key as the gateway, its stores, logs and metrics know it.

use std::fmt;

use sha2::{Digest, Sha256};

/// A bearer key as the gateway knows it: the first 128 bits of its SHA-256.
///
/// The key itself never leaves the gateway's first step: resolvers, stores (Redis key
/// names), logs and metric labels see only this hash, written as 32 hex digits. API keys
/// are long random strings, so the hash cannot be reversed by guessing.
///
/// ```
/// use overten_gateway::KeyHash;
/// let h = KeyHash::of("sk_live_abc");
/// assert_eq!(h.to_string().len(), 32);
/// assert!(!format!("{h:?}").contains("abc"));
/// ```
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct KeyHash([u8; 16]);

impl KeyHash {
    /// The hash of `key`.
    pub fn of(key: &str) -> KeyHash {
        let digest = Sha256::digest(key.as_bytes());
        let mut out = [0; 16];
        out.copy_from_slice(&digest[..16]);
        KeyHash(out)
    }

    /// The hash's first byte (spreads keys over shards).
    pub(crate) fn first_byte(&self) -> u8 {
        self.0[0]
    }

    /// The 32 lowercase hex digits, without allocating.
    pub fn hex(&self) -> [u8; 32] {
        let mut out = [0; 32];
        hex_into(&self.0, &mut out);
        out
    }
}

impl fmt::Display for KeyHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Hex digits are ASCII.
        f.write_str(std::str::from_utf8(&self.hex()).unwrap_or("?"))
    }
}

impl fmt::Debug for KeyHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "KeyHash({self})")
    }
}

/// Writes `bytes` as lowercase hex digits into `out` (twice as long).
pub(crate) fn hex_into(bytes: &[u8], out: &mut [u8]) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    for (b, pair) in bytes.iter().zip(out.chunks_exact_mut(2)) {
        pair[0] = HEX[usize::from(b >> 4)];
        pair[1] = HEX[usize::from(b & 15)];
    }
}

/// `bytes` as lowercase hex digits.
pub(crate) fn hex(bytes: &[u8]) -> String {
    let mut out = vec![0; bytes.len() * 2];
    hex_into(bytes, &mut out);
    String::from_utf8(out).unwrap_or_default()
}
