//! Any UTF-8 key as a NATS KV key, reversibly.
//!
//! NATS KV keys allow only `[-/_=.A-Za-z0-9]`, and no leading or trailing dot. A key that is
//! already valid is stored verbatim, so a PURISTA service (which stores names unencoded) sees
//! the same key. Any other key is stored as [`ESCAPE`] followed by the key with every byte
//! outside `[-/_A-Za-z0-9]` written as `=XX` (upper-case hex) — readable, and always valid
//! (no dots at all). A valid key that itself starts with [`ESCAPE`] is escaped too, so the
//! two forms never collide: the mapping is injective.

/// Marks an encoded key. Chosen to be unlikely as the start of a real state name.
pub const ESCAPE: &str = "_E_";

fn is_plain_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'/' | b'_')
}

/// True for keys NATS accepts as they are (async-nats's own rule).
pub fn is_valid_nats_key(key: &str) -> bool {
    !key.is_empty()
        && !key.starts_with('.')
        && !key.ends_with('.')
        && key
            .bytes()
            .all(|b| is_plain_byte(b) || matches!(b, b'=' | b'.'))
}

/// The NATS key for a state key.
pub fn encode(key: &str) -> String {
    if is_valid_nats_key(key) && !key.starts_with(ESCAPE) {
        return key.to_owned();
    }
    let mut out = String::with_capacity(ESCAPE.len() + key.len() * 3);
    out.push_str(ESCAPE);
    for b in key.bytes() {
        if is_plain_byte(b) {
            out.push(char::from(b));
        } else {
            out.push('=');
            out.push(char::from(HEX[usize::from(b >> 4)]));
            out.push(char::from(HEX[usize::from(b & 0xf)]));
        }
    }
    out
}

const HEX: &[u8; 16] = b"0123456789ABCDEF";

/// The state key for a NATS key; `None` for a string [`encode`] never produces.
pub fn decode(stored: &str) -> Option<String> {
    let Some(body) = stored.strip_prefix(ESCAPE) else {
        return is_valid_nats_key(stored).then(|| stored.to_owned());
    };
    let mut bytes = Vec::with_capacity(body.len());
    let mut iter = body.bytes();
    while let Some(b) = iter.next() {
        if b == b'=' {
            let hi = hex_value(iter.next()?)?;
            let lo = hex_value(iter.next()?)?;
            bytes.push(hi << 4 | lo);
        } else if is_plain_byte(b) {
            bytes.push(b);
        } else {
            return None;
        }
    }
    let key = String::from_utf8(bytes).ok()?;
    // Only the canonical encoding decodes: anything else was never produced by `encode`.
    (encode(&key) == stored).then_some(key)
}

fn hex_value(b: u8) -> Option<u8> {
    HEX.iter()
        .position(|&h| h == b)
        .and_then(|p| u8::try_from(p).ok())
}

/// Longest encoded key for a state key of `len` bytes.
pub fn max_encoded_len(len: usize) -> usize {
    ESCAPE.len() + 3 * len
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn valid_keys_are_verbatim() {
        for key in ["session-abc", "a/b", "a.b", "a=b", "A_1", "x..y"] {
            assert_eq!(encode(key), key);
        }
    }

    #[test]
    fn awkward_keys_are_escaped_into_valid_keys() {
        for key in [
            "session:abc",
            "a b",
            ".lead",
            "trail.",
            "*",
            ">",
            "%",
            "ü",
            "🦀",
            "_E_x",
        ] {
            let stored = encode(key);
            assert!(is_valid_nats_key(&stored), "{key:?} -> {stored:?}");
            assert!(stored.starts_with(ESCAPE));
            assert_eq!(decode(&stored).as_deref(), Some(key));
        }
        assert_eq!(encode("session:abc"), "_E_session=3Aabc");
    }

    #[test]
    fn non_canonical_forms_do_not_decode() {
        assert_eq!(decode("_E_a=3"), None);
        assert_eq!(decode("_E_=61"), None); // 'a' must be written plain
        assert_eq!(decode(".x"), None);
    }
}
