//! Property tests of the NATS key encoding: any string round-trips, the encoding is injective
//! and always a valid NATS key, and keys that are already valid stay as they are.

use proptest::prelude::*;
use state_store_nats::key::{decode, encode, is_valid_nats_key, prefix_filter, ESCAPE};

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn any_key_round_trips(key in "\\PC{1,64}") {
        let stored = encode(&key);
        prop_assert!(is_valid_nats_key(&stored), "{:?} -> {:?}", key, stored);
        prop_assert_eq!(decode(&stored), Some(key));
    }

    #[test]
    fn arbitrary_unicode_round_trips(key in any::<String>().prop_filter("non-empty", |k| !k.is_empty())) {
        prop_assert_eq!(decode(&encode(&key)), Some(key));
    }

    #[test]
    fn encoding_is_injective(a in "[-/_=.:a-c ]{1,8}", b in "[-/_=.:a-c ]{1,8}") {
        if a != b {
            prop_assert_ne!(encode(&a), encode(&b));
        }
    }

    #[test]
    fn valid_keys_stay_verbatim(tokens in prop::collection::vec("[-/_=a-zA-Z0-9]{1,8}", 1..5)) {
        let key = tokens.join(".");
        prop_assume!(!key.starts_with(ESCAPE));
        prop_assert_eq!(encode(&key), key);
    }

    #[test]
    fn keys_with_empty_tokens_are_escaped(a in "[a-z]{0,3}", b in "[a-z]{0,3}") {
        let key = format!("{a}..{b}");
        let stored = encode(&key);
        prop_assert!(stored.starts_with(ESCAPE));
        prop_assert!(is_valid_nats_key(&stored));
        prop_assert_eq!(decode(&stored), Some(key));
    }

    /// A handle's prefix is a run of subject tokens: a server-side filter on it finds every
    /// key under the prefix and no key under another prefix that is not nested in it.
    #[test]
    fn a_prefix_filter_matches_exactly_its_keys(
        p in prop::collection::vec("[-a-z. ü]{1,4}", 1..3),
        q in prop::collection::vec("[-a-z. ü]{1,4}", 1..3),
        name in "\\PC{1,12}",
    ) {
        let (p, q) = (p.join(":"), q.join(":"));
        let under = |prefix: &str, key: &str| {
            let filter = prefix_filter(prefix);
            encode(key).starts_with(filter.trim_end_matches('>'))
        };
        let own = format!("{p}:{name}");
        let other = format!("{q}:{name}");
        prop_assert!(under(&p, &own));
        let (p_path, q_path) = (format!("{p}:"), format!("{q}:"));
        let nested = p_path.starts_with(&q_path) || q_path.starts_with(&p_path);
        if !nested {
            prop_assert!(!under(&p, &other));
        }
    }
}
