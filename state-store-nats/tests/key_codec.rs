//! Property tests of the NATS key encoding: any string round-trips, the encoding is injective
//! and always a valid NATS key, and keys that are already valid stay as they are.

use proptest::prelude::*;
use state_store_nats::key::{decode, encode, is_valid_nats_key, ESCAPE};

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
    fn valid_keys_stay_verbatim(key in "[-/_=a-zA-Z0-9][-/_=.a-zA-Z0-9]{0,30}[-/_=a-zA-Z0-9]") {
        prop_assume!(!key.starts_with(ESCAPE));
        prop_assert_eq!(encode(&key), key);
    }
}
