//! The shared conformance suite for state-store backends.
//!
//! Every adapter in this workspace runs this suite against a real server; a third-party store
//! runs it with one line. Each behaviour of the contract is a `pub async fn` in [`cases`]; the
//! [`conformance_suite!`] macro stamps every case out as its own `#[test]` for a
//! [`StoreFactory`], so a failure names the behaviour. Each case works under a fresh random key
//! prefix, so runs can share one server. Cases that need a capability the store does not declare
//! assert that it is refused with `Unsupported`.
//!
//! # Your own store
//!
//! Implement [`state_store_core::Backend`], then in `tests/conformance.rs`:
//!
//! ```no_run
//! use std::collections::HashMap;
//! use std::sync::{Arc, Mutex};
//! use state_store_core::{async_trait, Backend, Capabilities, Entry, Error, SetMode, SetOptions, StateStore, StoreConfig, Version};
//!
//! /// A tiny store: a `HashMap` with versions, no TTL (increments come from the completion
//! /// layer, over its compare-and-set).
//! #[derive(Debug, Clone, Default)]
//! struct MapStore(Arc<Mutex<HashMap<String, (Vec<u8>, u64)>>>);
//!
//! #[async_trait]
//! impl Backend for MapStore {
//!     fn name(&self) -> &str { "map" }
//!     fn capabilities(&self) -> Capabilities {
//!         Capabilities::minimal().with_conditional(true)
//!     }
//!     async fn get_many(&self, keys: &[String]) -> Result<Vec<Option<Entry>>, Error> {
//!         let map = self.0.lock().unwrap();
//!         Ok(keys.iter().map(|k| map.get(k).map(|(v, n)| Entry::new(v.clone(), Version::new(n.to_string())))).collect())
//!     }
//!     async fn set(&self, key: &str, value: Vec<u8>, opts: &SetOptions) -> Result<Version, Error> {
//!         if opts.ttl.is_some() { return Err(Error::unsupported("map", "atomic expiry")); }
//!         let mut map = self.0.lock().unwrap();
//!         let current = map.get(key).map(|(_, n)| n.to_string());
//!         let allowed = match &opts.mode {
//!             SetMode::Upsert => true,
//!             SetMode::Create => current.is_none(),
//!             SetMode::Update(v) => current.as_deref() == Some(v.as_str()),
//!         };
//!         if !allowed { return Err(Error::Conflict { key: key.into() }); }
//!         let n = map.values().map(|(_, n)| *n).max().unwrap_or(0) + 1;
//!         map.insert(key.into(), (value, n));
//!         Ok(Version::new(n.to_string()))
//!     }
//!     async fn remove(&self, key: &str, expected: Option<&Version>) -> Result<bool, Error> {
//!         let mut map = self.0.lock().unwrap();
//!         match (expected, map.get(key)) {
//!             (_, None) => Ok(false),
//!             (Some(v), Some((_, n))) if v.as_str() != n.to_string() => Err(Error::Conflict { key: key.into() }),
//!             _ => Ok(map.remove(key).is_some()),
//!         }
//!     }
//!     async fn close(&self) -> Result<(), Error> { Ok(()) }
//! }
//!
//! // The one line: every case becomes its own #[test].
//! state_store_conformance::conformance_suite!({
//!     let data = MapStore::default();
//!     move |config: StoreConfig| {
//!         let data = data.clone();
//!         async move { Ok(StateStore::with_config(data, config)) }
//!     }
//! });
//! ```
//!
//! The same store is compiled and run as a test in this repository's `examples/tests/`.
//!
pub mod cases;
mod compute;
mod context;
mod elections;
pub mod faults;
pub mod history;
mod leases;
mod limits;
pub mod linearizability;
mod listings;
mod model;
pub mod near_cache;

pub use context::{across_processes, run_case, Context, ProcessFactory, StoreFactory, Worker};

/// Formats an error with its whole `source` chain, for assertion messages.
pub use state_store_core::report;

/// Every case, by module: the one list [`conformance_suite!`] stamps out and [`cases`]
/// re-exports. A case function left out of it is an unreachable `pub` item in a private
/// module, which the build refuses (`unreachable_pub`, `-D warnings`); no case is found by
/// searching the source.
#[doc(hidden)]
#[macro_export]
macro_rules! __conformance_cases {
    ($($mode:tt)*) => {
        $crate::__conformance_dispatch! {
            ($($mode)*)
            cases::basics {
                set_get_remove_object
                get_disabled
                set_disabled
                remove_disabled
                missing_is_not_null
                json_kinds_round_trip
                get_state_many
                overwrite_replaces
                remove_missing_is_ok
                typed_decode_error
                capabilities_are_truthful
                the_backend_refuses_what_it_does_not_declare
                destroy_then_fail
            }
            cases::keys {
                awkward_keys_round_trip
                key_limits
                value_limit
                reads_are_capped
                unprefixed_awkward_keys_round_trip
                errors_name_the_callers_name
                prefixes_isolate
                prefixes_never_collide
                handles_share_state
            }
            cases::conditional {
                create_conflicts
                update_checks_version
                update_after_plain_set
                conditional_remove
                update_loses_nothing
                plain_write_after_conditional_write
                versions_are_never_reused
                conditional_remove_has_one_winner
            }
            cases::counters {
                concurrent_increments
                increment_semantics
            }
            cases::expiry {
                ttl_expires
                plain_set_clears_ttl
                increment_ttl_on_create_only
                update_keeps_ttl
                fixed_window_closes_under_traffic
                keep_ttl_keeps_deadlines
                huge_ttl_is_refused
                entries_report_the_time_left
            }
            model {
                model_sequences
                model_concurrent
            }
            leases {
                lease_excludes_other_holders
                lease_names_are_any_state_names
                lease_release_by_non_holder_is_refused
                lease_tokens_always_increase
                store_records_are_out_of_callers_reach
                fenced_write_from_a_paused_holder_is_refused
                with_lease_runs_alone_and_cancels_on_loss
                lease_mutual_exclusion
                lease_of_a_killed_holder_is_taken_over
                a_released_lease_is_handed_to_a_waiter
            }
            elections {
                election_has_one_leader_and_fails_over
            }
            compute {
                a_missing_value_is_computed_once_across_processes
            }
            limits {
                fixed_window_is_exact_across_processes
                gcra_never_exceeds_the_quota_across_processes
                retry_after_is_honoured
                limiter_keys_are_isolated
                idle_limiter_state_expires
            }
            listings {
                list_returns_exactly_the_names_under_a_prefix
                watch_sees_every_change_in_order
                watch_sees_concurrent_writers_in_order
                watch_resumes_after_a_version
            }
            history {
                histories_stay_linearizable_when_clients_are_killed
            }
        }
    };
}

/// What [`__conformance_cases!`] does with the list: re-export it, or stamp out tests.
#[doc(hidden)]
#[macro_export]
macro_rules! __conformance_dispatch {
    ((reexport) $($first:ident $(:: $rest:ident)* { $($case:ident)* })*) => {
        $( pub use $crate::$first $(:: $rest)* ::{ $($case),* }; )*
    };
    ((tests $make:expr) $($first:ident $(:: $rest:ident)* { $($case:ident)* })*) => {
        $($(
            #[test]
            fn $case() {
                $crate::run_case($make, $crate::cases::$case);
            }
        )*)*
    };
}

/// Stamps out every case in [`cases`] as its own `#[test]` (from the one registered list, so
/// none is ever left out).
///
/// `conformance_suite!(factory)` — `factory` is an expression (it may `.await`) giving a
/// [`StoreFactory`]; it is evaluated once per test.
///
/// `conformance_suite!(optional: factory)` — the expression gives `Option<impl StoreFactory>`;
/// `None` skips: for a server that may be missing, after saying so loudly.
#[macro_export]
macro_rules! conformance_suite {
    (optional: $factory:expr) => {
        $crate::__conformance_cases!(tests async { $factory });
    };
    ($factory:expr) => {
        $crate::conformance_suite!(optional: ::std::option::Option::Some($factory));
    };
}
