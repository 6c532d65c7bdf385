//! The cache's memory: values bounded in bytes, and the tickets that tell a read whether it
//! may keep what it read.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::AtomicBool;
use std::sync::Mutex;

use tokio::time::Instant;

/// What the reads and the follower share.
pub(super) struct Shared {
    pub(super) slots: Mutex<Slots>,
    /// True while the watch runs: only then may values be cached.
    pub(super) live: AtomicBool,
}

impl Shared {
    pub(super) fn forget(&self, key: &str) {
        lock(&self.slots).remove(key);
    }

    pub(super) fn forget_all(&self) {
        lock(&self.slots).clear();
    }
}

pub(super) fn lock(slots: &Mutex<Slots>) -> std::sync::MutexGuard<'_, Slots> {
    // A panic while holding the lock leaves a consistent map (every change is one call).
    slots
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Cached values, bounded in bytes; the oldest insertions go first.
pub(super) struct Slots {
    map: HashMap<String, Slot>,
    order: VecDeque<(String, u64)>,
    bytes: usize,
    max_bytes: usize,
    next: u64,
    /// The reads under way, by key: a ticket (a generation) and how many reads hold it. Each
    /// read of a missing key takes the key's ticket (a new one if none is out), and caches
    /// what it read only if that ticket is still out when it is back. Forgetting a key
    /// withdraws its ticket (the values read may predate the change); overlapping reads of a
    /// key share one, so a hot key read without pause still gets cached.
    pending: HashMap<String, (u64, usize)>,
}

struct Slot {
    value: Option<Vec<u8>>,
    until: Instant,
    seq: u64,
}

/// What a slot costs besides its key and value: the map's and the queue's bookkeeping.
const SLOT_OVERHEAD: usize = 64;

impl Slots {
    pub(super) fn new(max_bytes: usize) -> Self {
        Slots {
            map: HashMap::new(),
            order: VecDeque::new(),
            bytes: 0,
            max_bytes,
            next: 0,
            pending: HashMap::new(),
        }
    }

    /// A ticket for a read of `key` about to start.
    pub(super) fn reading(&mut self, key: &str) -> u64 {
        if let Some((ticket, readers)) = self.pending.get_mut(key) {
            *readers += 1;
            return *ticket;
        }
        self.next += 1;
        self.pending.insert(key.to_owned(), (self.next, 1));
        self.next
    }

    /// Whether the read of `key` with `ticket` may cache what it read; its hold on the ticket
    /// ends.
    pub(super) fn take_ticket(&mut self, key: &str, ticket: u64) -> bool {
        match self.pending.get_mut(key) {
            Some((out, readers)) if *out == ticket => {
                *readers -= 1;
                if *readers == 0 {
                    self.pending.remove(key);
                }
                true
            }
            _ => false,
        }
    }

    fn cost(key: &str, value: Option<&Vec<u8>>) -> usize {
        2 * key.len() + value.map_or(0, Vec::len) + SLOT_OVERHEAD
    }

    /// The cached value of `key` (`Some(None)`: cached as missing), if fresh.
    pub(super) fn get(&self, key: &str, now: Instant) -> Option<Option<Vec<u8>>> {
        self.map
            .get(key)
            .filter(|slot| slot.until > now)
            .map(|slot| slot.value.clone())
    }

    pub(super) fn insert(&mut self, key: String, value: Option<Vec<u8>>, until: Instant) {
        let cost = Self::cost(&key, value.as_ref());
        if cost > self.max_bytes {
            return;
        }
        self.remove(&key);
        self.next += 1;
        self.bytes += cost;
        self.order.push_back((key.clone(), self.next));
        self.map.insert(
            key,
            Slot {
                value,
                until,
                seq: self.next,
            },
        );
        while self.bytes > self.max_bytes {
            let Some((oldest, seq)) = self.order.pop_front() else {
                break;
            };
            if self.map.get(&oldest).is_some_and(|slot| slot.seq == seq) {
                self.remove(&oldest);
            }
        }
        // Entries of removed keys linger in the queue: compact it when they dominate.
        if self.order.len() > 2 * self.map.len() + 1024 {
            let map = &self.map;
            self.order
                .retain(|(key, seq)| map.get(key).is_some_and(|slot| slot.seq == *seq));
        }
    }

    pub(super) fn remove(&mut self, key: &str) {
        self.pending.remove(key);
        if let Some(slot) = self.map.remove(key) {
            self.bytes -= Self::cost(key, slot.value.as_ref());
        }
    }

    pub(super) fn clear(&mut self) {
        self.pending.clear();
        self.map.clear();
        self.order.clear();
        self.bytes = 0;
    }
}

/// The tickets of a read under way ([`Slots::reading`]): spent when it ends, however it ends
/// (an error, a cancelled call), so none lingers.
pub(super) struct Tickets<'a> {
    pub(super) shared: &'a Shared,
    pub(super) keys: &'a [String],
    pub(super) numbers: Vec<u64>,
}

impl Drop for Tickets<'_> {
    fn drop(&mut self) {
        if self.numbers.iter().any(|&n| n != 0) {
            let mut slots = lock(&self.shared.slots);
            for (key, ticket) in self.keys.iter().zip(&self.numbers) {
                slots.take_ticket(key, *ticket);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn slots_stay_within_their_bytes_and_drop_the_oldest_first() {
        let mut slots = Slots::new(10_000);
        let until = Instant::now() + Duration::from_secs(60);
        // A million distinct keys through a 10 kB cache.
        for i in 0..1_000_000 {
            slots.insert(format!("key-{i}"), Some(vec![b'x'; 100]), until);
            assert!(slots.bytes <= 10_000);
        }
        assert!(slots.order.len() <= 2 * slots.map.len() + 1024);
        let now = Instant::now();
        assert_eq!(slots.get("key-999999", now), Some(Some(vec![b'x'; 100])));
        assert_eq!(slots.get("key-0", now), None);
        // Too big for the whole cache: not kept.
        slots.insert("huge".to_owned(), Some(vec![0; 20_000]), until);
        assert_eq!(slots.get("huge", now), None);
        // Expired: not served.
        slots.insert("old".to_owned(), None, now);
        assert_eq!(slots.get("old", now), None);
        slots.clear();
        assert_eq!(slots.bytes, 0);
    }

    #[test]
    fn a_read_caches_only_if_its_own_key_did_not_change_meanwhile() {
        let mut slots = Slots::new(10_000);
        // Another key's change takes nothing from this read.
        let a = slots.reading("a");
        slots.remove("b");
        assert!(slots.take_ticket("a", a));
        // Its own key's change takes its ticket; spent once.
        let a = slots.reading("a");
        slots.remove("a");
        assert!(!slots.take_ticket("a", a));
        // Overlapping reads of a key share its ticket: a key read without pause is cached.
        let first = slots.reading("a");
        let second = slots.reading("a");
        assert_eq!(first, second);
        assert!(slots.take_ticket("a", first));
        let third = slots.reading("a");
        assert!(slots.take_ticket("a", second));
        assert!(slots.take_ticket("a", third));
        assert!(!slots.take_ticket("a", third), "each hold ends once");
        // A change withdraws the ticket from every read holding it, and the next read gets
        // a new one that the earlier holders' ends do not spend.
        let (old, also_old) = (slots.reading("a"), slots.reading("a"));
        slots.remove("a");
        let new = slots.reading("a");
        assert_ne!(old, new);
        assert!(!slots.take_ticket("a", old));
        assert!(!slots.take_ticket("a", also_old));
        assert!(slots.take_ticket("a", new));
        // Forgetting everything takes every ticket; nothing lingers after.
        let c = slots.reading("c");
        slots.clear();
        assert!(!slots.take_ticket("c", c));
        assert!(slots.pending.is_empty());
        // No ticket is 0.
        assert!(!slots.take_ticket("a", 0));
    }
}
