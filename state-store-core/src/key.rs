//! State names, key prefixes, and the keys backends see.
//!
//! # Stored key layout
//!
//! A prefix is a path of segments separated by [`PREFIX_SEPARATOR`] (`"billing"`,
//! `"tenant-7:sessions"`); empty segments are dropped, so `"billing:"` and `"billing"` are the
//! same prefix. The stored key is the prefix, the separator, then the name:
//! `tenant-7:sessions:abc`. Without a prefix the stored key is the name itself (what PURISTA
//! stores). A segment never contains the separator, so two handles whose prefix paths differ
//! in some segment can never produce the same key, whatever their names (`t1` + `2:x` is
//! `t1:2:x`, `t12` + `:x` is `t12::x`). A handle whose prefix path is the start of another's
//! (no prefix at all, or `t1` next to `t1:2`) sees that handle's keys as names with the rest
//! of the path in front — nesting, as `with_prefix` builds it.
//!
//! # Reserved segments
//!
//! A segment that starts with [`RESERVED_MARKER`] (`$`, as NATS reserves `$JS` and `$SYS`)
//! belongs to the store's own records: leases and their fencing counters under `$lease`, rate
//! limits under `$ratelimit`, sessions under `$sessions`, each under the prefix of the handle
//! that made them. A handle refuses such a name or prefix, and leaves such keys out of listings
//! and watches, so no caller-chosen string reaches those records; the components that own them
//! go through [`StateStore::reserved`](crate::StateStore::reserved).

use crate::error::{Error, Result};

/// Separates the segments of a key prefix, and the prefix from the name.
pub const PREFIX_SEPARATOR: char = ':';

/// Starts a reserved segment of a key. A `:`-separated segment that starts with `$` (as NATS
/// reserves `$JS` and `$SYS`) belongs to the store's own records: leases and their fencing
/// counters under `$lease`, rate limits under `$ratelimit`, sessions under `$sessions`, each
/// under the prefix of the handle that made them. A handle refuses such a name or prefix
/// ([`Error::InvalidKey`]) and leaves such keys out of listings and watches, so no
/// caller-chosen string reaches those records; the components that own them go through
/// [`StateStore::reserved`](crate::StateStore::reserved).
pub const RESERVED_MARKER: char = '$';

/// Whether some segment of `key` starts with [`RESERVED_MARKER`].
pub(crate) fn has_reserved_segment(key: &str) -> bool {
    key.split(PREFIX_SEPARATOR)
        .any(|segment| segment.starts_with(RESERVED_MARKER))
}

/// `prefix` in canonical form, if a caller may use it: at least one segment, none reserved.
pub(crate) fn caller_prefix(prefix: &str) -> Result<String> {
    let canonical = normalize_prefix(prefix);
    if canonical.is_empty() {
        Err(Error::invalid_key(
            prefix,
            "a prefix needs at least one segment that is not empty",
        ))
    } else if has_reserved_segment(&canonical) {
        Err(reserved(prefix))
    } else {
        Ok(canonical)
    }
}

/// Why a caller's name or prefix with a reserved segment is refused.
pub(crate) fn reserved(key: &str) -> Error {
    Error::invalid_key(
        key,
        format!(
            "segments starting with `{RESERVED_MARKER}` are reserved for the store's own records"
        ),
    )
}

/// A prefix in canonical form: its non-empty segments joined by [`PREFIX_SEPARATOR`].
pub(crate) fn normalize_prefix(prefix: &str) -> String {
    join_prefix("", prefix)
}

/// `outer` (canonical) followed by the segments of `inner`, in canonical form.
pub(crate) fn join_prefix(outer: &str, inner: &str) -> String {
    let mut out = String::with_capacity(outer.len() + inner.len() + 1);
    out.push_str(outer);
    for segment in inner.split(PREFIX_SEPARATOR).filter(|s| !s.is_empty()) {
        if !out.is_empty() {
            out.push(PREFIX_SEPARATOR);
        }
        out.push_str(segment);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The stored key, as the namespace layer makes it.
    fn key(prefix: &str, name: &str) -> String {
        match normalize_prefix(prefix) {
            root if root.is_empty() => name.to_owned(),
            root => format!("{root}{PREFIX_SEPARATOR}{name}"),
        }
    }

    #[test]
    fn prefix_and_name_are_separated() {
        assert_eq!(key("svc", "a"), "svc:a");
        assert_eq!(key("svc:", "a"), "svc:a");
        assert_eq!(key("", "a:b"), "a:b");
        assert_eq!(key("::a::b:", "c"), "a:b:c");
    }

    #[test]
    fn prefixes_that_are_not_nested_never_collide() {
        assert_ne!(key("t1", "2:x"), key("t12", ":x"));
        assert_ne!(key("a", "b"), key("ab", "b"));
        // Nesting is the one way to share keys.
        assert_eq!(key("t1", "2:x"), key("t1:2", "x"));
        assert_eq!(join_prefix("a", "b:"), "a:b");
        assert_eq!(join_prefix("", "::"), "");
    }

    #[test]
    fn reserved_segments_are_found_anywhere() {
        for key in ["$lease", "a:$b", "a::$", "$", "x:y:$z:w"] {
            assert!(has_reserved_segment(key), "{key}");
        }
        for key in ["a$", "a:b$c", "", "price:usd$", "a: $b"] {
            assert!(!has_reserved_segment(key), "{key}");
        }
    }

    #[test]
    fn caller_prefixes_have_a_segment_and_none_reserved() {
        assert_eq!(caller_prefix("::a::b:").ok().as_deref(), Some("a:b"));
        for prefix in ["", ":", ":::", "$lease", "a:$b", "::$"] {
            assert!(
                matches!(caller_prefix(prefix), Err(Error::InvalidKey { .. })),
                "{prefix:?}"
            );
        }
    }
}
