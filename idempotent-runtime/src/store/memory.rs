//! The embedded store: one process, no server.
//!
//! Entries live in a sharded map. Each entry has a deadline: the end of its lease while in
//! flight, the end of its TTL once completed. Past it the entry counts as absent, and it
//! is removed by a bounded sweep that every operation runs on its shard (at most
//! [`SWEEP_BATCH`] entries at a time), so memory is bounded by the live records, with no
//! background task needed. [`MemoryStore::purge_expired`] sweeps everything at once.
//!
//! Removals are scheduled in one queue per duration (a lease, an endpoint's TTL): entries
//! given the same duration expire in the order they were given it, so scheduling is a
//! push at the back and sweeping a pop at the front, however many records are held. The
//! first [`DURATION_QUEUES`] durations a shard sees get a queue; any further ones, which
//! a service with a handful of endpoints never has, share a heap.
//!
//! Use it for a single replica, for tests, and as the default of the `orders` example.
//! Several replicas need a shared store (Redis or Postgres).

use foldhash::fast::RandomState;
use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, VecDeque};
use std::future::{Future, ready};
use std::hash::BuildHasher;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use tokio::time::Instant;

use super::{Claim, FencingToken, Record, Store, StoreError};
use crate::{Fingerprint, StoredResponse};

/// How many expired entries one operation removes at most.
pub const SWEEP_BATCH: usize = 32;

/// How many distinct durations get a removal queue of their own in each shard.
pub const DURATION_QUEUES: usize = 8;

/// Many shards keep each map small: a map that grows doubles and rehashes under its
/// lock, and with a day's TTL a busy service holds millions of records.
const SHARDS: usize = 128;

/// The embedded in-process store.
///
/// Cloning is cheap and shares the map.
///
/// ```
/// use idempotent_runtime::{Idempotency, MemoryStore};
///
/// let idempotency = Idempotency::new(MemoryStore::new());
/// # let _ = idempotency;
/// ```
#[derive(Clone, Default)]
pub struct MemoryStore {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for MemoryStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemoryStore")
            .field("len", &self.len())
            .finish()
    }
}

struct Inner {
    shards: Vec<Mutex<Shard>>,
    hasher: RandomState,
    next_token: AtomicU64,
}

impl Default for Inner {
    fn default() -> Self {
        Self {
            shards: (0..SHARDS).map(|_| Mutex::default()).collect(),
            hasher: RandomState::default(),
            next_token: AtomicU64::new(1),
        }
    }
}

#[derive(Default)]
struct Shard {
    /// The key is shared with its scheduled removals, so that renewing or completing an
    /// entry allocates nothing.
    entries: HashMap<Arc<str>, Entry, RandomState>,
    /// When to look at which key again; stale removals (the entry was renewed, completed
    /// or replaced since) are skipped.
    removals: Removals,
}

/// A key to look at again when its deadline has passed.
type Removal = (Instant, Arc<str>);

/// A shard's scheduled removals (see the module docs).
#[derive(Default)]
struct Removals {
    /// One queue per duration, each in deadline order.
    queues: Vec<(Duration, VecDeque<Removal>)>,
    /// Removals with a duration that has no queue, in deadline order.
    others: BinaryHeap<Reverse<Removal>>,
}

impl Removals {
    /// Schedules a look at `key` once `duration` has passed since `now`. The deadline is
    /// derived here, so that each queue stays in order.
    fn schedule(&mut self, now: Instant, duration: Duration, key: Arc<str>) {
        let deadline = now + duration;
        if let Some((_, queue)) = self.queues.iter_mut().find(|(d, _)| *d == duration) {
            queue.push_back((deadline, key));
        } else if self.queues.len() < DURATION_QUEUES {
            self.queues
                .push((duration, VecDeque::from([(deadline, key)])));
        } else {
            self.others.push(Reverse((deadline, key)));
        }
    }

    /// The next removal due by `now`, if any.
    fn next_due(&mut self, now: Instant) -> Option<Removal> {
        for (_, queue) in &mut self.queues {
            if queue.front().is_some_and(|(deadline, _)| *deadline <= now) {
                return queue.pop_front();
            }
        }
        match self.others.peek() {
            Some(Reverse((deadline, _))) if *deadline <= now => {
                self.others.pop().map(|Reverse(due)| due)
            }
            _ => None,
        }
    }
}

struct Entry {
    fingerprint: Fingerprint,
    token: FencingToken,
    deadline: Instant,
    response: Option<StoredResponse>,
}

impl Entry {
    fn record(&self, now: Instant) -> Record {
        match &self.response {
            Some(response) => Record::Completed {
                fingerprint: self.fingerprint,
                response: response.clone(),
            },
            None => Record::InFlight {
                fingerprint: self.fingerprint,
                lease_remaining: self.deadline - now,
            },
        }
    }
}

impl Shard {
    fn sweep(&mut self, now: Instant, limit: usize) -> usize {
        let mut removed = 0;
        for _ in 0..limit {
            let Some((deadline, key)) = self.removals.next_due(now) else {
                break;
            };
            if self
                .entries
                .get(&key)
                .is_some_and(|e| e.deadline == deadline)
            {
                self.entries.remove(&key);
                removed += 1;
            }
        }
        removed
    }

    /// Reschedules the removal of `key`'s entry to `now + duration`, sharing its stored key.
    fn set_deadline(&mut self, key: &str, now: Instant, duration: Duration) {
        if let Some((key, _)) = self.entries.get_key_value(key) {
            let key = Arc::clone(key);
            self.removals.schedule(now, duration, key);
        }
    }

    /// The entry under `key` if it is live and in flight under `token`.
    fn owned(&mut self, key: &str, token: FencingToken, now: Instant) -> Option<&mut Entry> {
        self.entries
            .get_mut(key)
            .filter(|e| e.token == token && e.response.is_none() && e.deadline > now)
    }
}

impl MemoryStore {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    /// How many entries are held, expired ones not yet swept included.
    ///
    /// ```
    /// assert_eq!(idempotent_runtime::MemoryStore::new().len(), 0);
    /// ```
    pub fn len(&self) -> usize {
        self.inner
            .shards
            .iter()
            .map(|s| lock(s).entries.len())
            .sum()
    }

    /// Whether the store holds no entry.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Removes every expired entry now; returns how many went.
    ///
    /// ```
    /// assert_eq!(idempotent_runtime::MemoryStore::new().purge_expired(), 0);
    /// ```
    pub fn purge_expired(&self) -> usize {
        let now = Instant::now();
        self.inner
            .shards
            .iter()
            .map(|s| lock(s).sweep(now, usize::MAX))
            .sum()
    }

    /// The shard holding `key`, its expired entries swept as of `now`.
    fn shard(&self, key: &str, now: Instant) -> MutexGuard<'_, Shard> {
        let index = self.inner.hasher.hash_one(key) as usize % SHARDS;
        let mut shard = lock(&self.inner.shards[index]);
        shard.sweep(now, SWEEP_BATCH);
        shard
    }
}

fn lock(shard: &Mutex<Shard>) -> MutexGuard<'_, Shard> {
    // Nothing here panics while holding the lock; if something ever did, the map is
    // still consistent, so keep going.
    shard.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Store for MemoryStore {
    fn claim(
        &self,
        key: &str,
        fingerprint: Fingerprint,
        lease: Duration,
    ) -> impl Future<Output = Result<Claim, StoreError>> + Send {
        let now = Instant::now();
        let mut shard = self.shard(key, now);
        let claim = match shard.entries.get(key).filter(|e| e.deadline > now) {
            Some(entry) => Claim::Existing(entry.record(now)),
            None => {
                let token = FencingToken(self.inner.next_token.fetch_add(1, Ordering::Relaxed));
                let deadline = now + lease;
                let key: Arc<str> = Arc::from(key);
                shard.removals.schedule(now, lease, Arc::clone(&key));
                shard.entries.insert(
                    key,
                    Entry {
                        fingerprint,
                        token,
                        deadline,
                        response: None,
                    },
                );
                Claim::Acquired(token)
            }
        };
        ready(Ok(claim))
    }

    fn renew(
        &self,
        key: &str,
        token: FencingToken,
        lease: Duration,
    ) -> impl Future<Output = Result<bool, StoreError>> + Send {
        let now = Instant::now();
        let mut shard = self.shard(key, now);
        let renewed = match shard.owned(key, token, now) {
            Some(entry) => {
                entry.deadline = now + lease;
                true
            }
            None => false,
        };
        if renewed {
            shard.set_deadline(key, now, lease);
        }
        ready(Ok(renewed))
    }

    fn complete(
        &self,
        key: &str,
        token: FencingToken,
        response: &StoredResponse,
        ttl: Duration,
    ) -> impl Future<Output = Result<bool, StoreError>> + Send {
        let now = Instant::now();
        let mut shard = self.shard(key, now);
        let completed = match shard.owned(key, token, now) {
            Some(entry) => {
                entry.deadline = now + ttl;
                entry.response = Some(response.clone());
                true
            }
            None => false,
        };
        if completed {
            shard.set_deadline(key, now, ttl);
        }
        ready(Ok(completed))
    }

    fn release(
        &self,
        key: &str,
        token: FencingToken,
    ) -> impl Future<Output = Result<bool, StoreError>> + Send {
        let now = Instant::now();
        let mut shard = self.shard(key, now);
        let released = shard.owned(key, token, now).is_some();
        if released {
            shard.entries.remove(key);
        }
        ready(Ok(released))
    }

    fn lookup(&self, key: &str) -> impl Future<Output = Result<Option<Record>, StoreError>> + Send {
        let now = Instant::now();
        let shard = self.shard(key, now);
        let record = shard
            .entries
            .get(key)
            .filter(|e| e.deadline > now)
            .map(|e| e.record(now));
        ready(Ok(record))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn expired_entries_are_swept_without_a_background_task() {
        let store = MemoryStore::new();
        let fp = Fingerprint::of_bytes(b"x");
        for i in 0..1000 {
            store
                .claim(&format!("k{i}"), fp, Duration::from_secs(1))
                .await
                .unwrap();
        }
        assert_eq!(store.len(), 1000);
        tokio::time::advance(Duration::from_secs(2)).await;
        // Each operation sweeps a bounded batch of its shard.
        for i in 0..200 {
            store.lookup(&format!("other{i}")).await.unwrap();
        }
        let left = store.len();
        assert!(left < 1000, "sweeping made no progress: {left}");
        assert_eq!(store.purge_expired(), left);
        assert!(store.is_empty());
    }

    #[tokio::test(start_paused = true)]
    async fn every_duration_is_swept_in_time_queued_or_not() {
        let store = MemoryStore::new();
        let fp = Fingerprint::of_bytes(b"x");
        // More distinct durations than get a queue, longest first, so that a queue
        // ordered by scheduling alone would hold the short ones back.
        let durations = DURATION_QUEUES as u64 * 2;
        for i in 0..durations {
            let lease = Duration::from_secs(durations - i);
            store.claim(&format!("k{i}"), fp, lease).await.unwrap();
        }
        for elapsed in 1..=durations {
            tokio::time::advance(Duration::from_secs(1)).await;
            assert_eq!(store.purge_expired(), 1, "after {elapsed} s");
            assert_eq!(store.len() as u64, durations - elapsed);
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_completed_entry_lives_its_ttl_not_its_lease() {
        let store = MemoryStore::new();
        let fp = Fingerprint::of_bytes(b"x");
        let Claim::Acquired(token) = store.claim("k", fp, Duration::from_secs(1)).await.unwrap()
        else {
            panic!("a new key is acquired");
        };
        let response = StoredResponse::new(
            http::StatusCode::CREATED,
            http::HeaderMap::new(),
            bytes::Bytes::from_static(b"done"),
        );
        assert!(
            store
                .complete("k", token, &response, Duration::from_secs(10))
                .await
                .unwrap()
        );
        tokio::time::advance(Duration::from_secs(5)).await;
        assert_eq!(store.purge_expired(), 0, "the lease's removal is stale");
        assert!(matches!(
            store.lookup("k").await.unwrap(),
            Some(Record::Completed { .. })
        ));
        tokio::time::advance(Duration::from_secs(6)).await;
        assert_eq!(store.purge_expired(), 1);
        assert!(store.is_empty());
    }
}
