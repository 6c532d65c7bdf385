//! Keys Dapr would refuse, made safe reversibly.
//!
//! Dapr stores a key as `<app-id>||<key>` and refuses keys containing `||`. Such a key (or one
//! starting with [`ESCAPE`]) is stored as [`ESCAPE`] followed by the key with `%` written as
//! `%25` and `|` as `%7C`; every other key is stored verbatim. The two forms never collide.

/// Marks an encoded key.
pub const ESCAPE: &str = "~e~";

/// The Dapr key for a state key.
pub fn encode(key: &str) -> String {
    if !key.contains("||") && !key.starts_with(ESCAPE) {
        return key.to_owned();
    }
    let mut out = String::with_capacity(key.len() + 8);
    out.push_str(ESCAPE);
    for c in key.chars() {
        match c {
            '%' => out.push_str("%25"),
            '|' => out.push_str("%7C"),
            c => out.push(c),
        }
    }
    out
}

/// The state key for a Dapr key.
pub fn decode(stored: &str) -> String {
    match stored.strip_prefix(ESCAPE) {
        None => stored.to_owned(),
        Some(body) => body.replace("%7C", "|").replace("%25", "%"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_keys_dapr_refuses_are_escaped() {
        assert_eq!(encode("session:abc"), "session:abc");
        assert_eq!(encode("a|b"), "a|b");
        for key in ["a||b", "||", "~e~x", "%7C||", "a|||b%"] {
            let stored = encode(key);
            assert!(!stored.contains("||"), "{stored}");
            assert_eq!(decode(&stored), key);
        }
        assert_ne!(encode("~e~a%7C%7Cb"), encode("a||b"));
    }
}
