//! Any UTF-8 key as a NATS KV key, reversibly, with prefixes as subject tokens.
//!
//! NATS KV keys allow only `[-/_=.A-Za-z0-9]`, no leading or trailing dot, and no empty token
//! (`a..b`: nats-server drops such subjects). A key that is already valid is stored verbatim,
//! so a PURISTA service (which stores names unencoded) sees the same key.
//!
//! Any other key is stored as the token [`ESCAPE`] followed by one token per `:`-separated
//! part of the key: `session:abc` is `_E_.session.abc`, `tenant:sessions:a b` is
//! `_E_.tenant.sessions.a=20b`. In a part, every byte outside `[-/_A-Za-z0-9]` is written as
//! `=XX` (upper-case hex), and an empty part as a lone `=`. Since a prefixed key is
//! `prefix:name` (see `state_store_core::PREFIX_SEPARATOR`), every segment of a handle's prefix
//! is a subject token of its own, so a server-side filter (`$KV.<bucket>._E_.tenant.>`) finds
//! exactly one prefix's keys. A valid key that itself starts with `_E_` is escaped too, so the
//! two forms never collide: the mapping is injective.

use state_store_core::PREFIX_SEPARATOR;

/// The first token of an encoded key.
pub const ESCAPE: &str = "_E_";

fn is_plain_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'/' | b'_')
}

/// True for keys NATS stores as they are: the KV charset, no empty token (`..`, or a dot at
/// either end).
pub fn is_valid_nats_key(key: &str) -> bool {
    key.split('.')
        .all(|token| !token.is_empty() && token.bytes().all(|b| is_plain_byte(b) || b == b'='))
}

/// The NATS key for a state key.
pub fn encode(key: &str) -> String {
    if is_valid_nats_key(key) && !key.starts_with(ESCAPE) {
        return key.to_owned();
    }
    let mut out = String::with_capacity(ESCAPE.len() + key.len() * 3 + 1);
    out.push_str(ESCAPE);
    for part in key.split(PREFIX_SEPARATOR) {
        out.push('.');
        if part.is_empty() {
            out.push('=');
        }
        for b in part.bytes() {
            if is_plain_byte(b) {
                out.push(char::from(b));
            } else {
                out.push('=');
                out.push(char::from(HEX[usize::from(b >> 4)]));
                out.push(char::from(HEX[usize::from(b & 0xf)]));
            }
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
    let body = body.strip_prefix('.')?;
    let mut bytes = Vec::with_capacity(body.len());
    for (i, token) in body.split('.').enumerate() {
        if i > 0 {
            bytes.push(PREFIX_SEPARATOR as u8);
        }
        if token == "=" {
            continue;
        }
        let mut iter = token.bytes();
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
    }
    let key = String::from_utf8(bytes).ok()?;
    // Only the canonical encoding decodes: anything else was never produced by `encode`.
    (encode(&key) == stored).then_some(key)
}

/// The subject filter (below the bucket's prefix) matching every key under a canonical
/// handle prefix (`tenant:sessions`): `_E_.tenant.sessions.>`; `>` (every key) for no
/// prefix. For listing by prefix.
pub fn prefix_filter(prefix: &str) -> String {
    if prefix.is_empty() {
        return ">".to_owned();
    }
    let mut filter = encode(&format!("{prefix}{PREFIX_SEPARATOR}"));
    // The encoding ends with the empty name's `=` token: a wildcard takes its place.
    filter.pop();
    filter.push('>');
    filter
}

fn hex_value(b: u8) -> Option<u8> {
    HEX.iter()
        .position(|&h| h == b)
        .and_then(|p| u8::try_from(p).ok())
}

/// Longest encoded key for a state key of `len` bytes.
pub fn max_encoded_len(len: usize) -> usize {
    ESCAPE.len() + 3 * len + 2
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn valid_keys_are_verbatim() {
        for key in ["session-abc", "a/b", "a.b", "a=b", "A_1", "x.y.z"] {
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
            "a..b",
            "..",
            "a:",
            ":",
            "t1:2:x",
            "t12::x",
        ] {
            let stored = encode(key);
            assert!(is_valid_nats_key(&stored), "{key:?} -> {stored:?}");
            assert!(stored.starts_with(ESCAPE));
            assert_eq!(decode(&stored).as_deref(), Some(key));
        }
        assert_eq!(encode("session:abc"), "_E_.session.abc");
        assert_eq!(encode("t12::x"), "_E_.t12.=.x");
        assert_eq!(encode("a..b"), "_E_.a=2E=2Eb");
    }

    #[test]
    fn prefixes_are_subject_tokens() {
        assert_eq!(prefix_filter("tenant:sessions"), "_E_.tenant.sessions.>");
        assert_eq!(prefix_filter("a b"), "_E_.a=20b.>");
        assert_eq!(prefix_filter(""), ">");
        let filter = prefix_filter("t1");
        assert!(encode("t1:x.y").starts_with(filter.trim_end_matches('>')));
        assert!(!encode("t12:x").starts_with(filter.trim_end_matches('>')));
    }

    #[test]
    fn non_canonical_forms_do_not_decode() {
        assert_eq!(decode("_E_.a=3"), None);
        assert_eq!(decode("_E_.=61"), None); // 'a' must be written plain
        assert_eq!(decode("_E_a"), None);
        assert_eq!(decode(".x"), None);
        assert_eq!(decode("x..y"), None);
    }
}
