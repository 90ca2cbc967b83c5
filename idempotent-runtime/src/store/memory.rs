//! The embedded store: one process, no server.
//!
//! Entries live in a sharded map. Each entry has a deadline: the end of its lease while in
//! flight, the end of its TTL once completed. Past it the entry counts as absent, and it
//! is removed by a bounded sweep that every operation runs on its shard (at most
//! [`SWEEP_BATCH`] entries at a time), with no background task. So expired entries go
//! as traffic reaches their shards: under steady traffic memory follows the live
//! records, but after a burst of new keys and a lull the expired ones can stay (and
//! count in [`len`](MemoryStore::len)) until enough operations have swept them.
//! [`MemoryStore::purge_expired`] sweeps everything at once: call it from a timer of
//! your own where traffic comes in bursts.
//!
//! The live records are as many as the keys clients sent within a TTL, and nothing else
//! bounds them: a client that sends a new key with every request makes the store grow
//! until the TTL catches up. [`MemoryStore::with_max_entries`] puts a ceiling on it.
//! A full store never evicts a live record, since a record dropped early is a handler
//! run twice: it refuses claims of new keys, so the protocol answers `503` without
//! running the handler, while retries of the keys it holds are still answered. The one
//! exception is a store made [`evicting`](MemoryStore::evicting), for the fast tier of
//! a [`TieredStore`](crate::store::TieredStore), where a record dropped early only
//! costs a round trip to the durable store.
//!
//! Removals are scheduled in one queue per duration (a lease, an endpoint's TTL): entries
//! given the same duration expire in the order they were given it, so scheduling is a
//! push at the back and sweeping a pop at the front, however many records are held. The
//! first [`DURATION_QUEUES`] durations a shard sees get a queue; any further ones, which
//! a service with a handful of endpoints never has, share a heap.
//!
//! Leases and TTLs longer than about 100 years (`Duration::MAX` for "for ever") are cut
//! to 100 years.
//!
//! Use it for a single replica, for tests, and as the default of the `orders` example.
//! Several replicas need a shared store (Redis or Postgres).

use foldhash::fast::RandomState;
use hashbrown::HashTable;
use hashbrown::hash_table::Entry as Slot;
use std::cmp::Reverse;
use std::collections::{BinaryHeap, VecDeque};
use std::future::{Future, ready};
use std::hash::BuildHasher;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use tokio::time::Instant;

use super::{Claim, FencingToken, LONGEST, Record, Store, StoreError};
use crate::response::Header;
use crate::{Fingerprint, StoredResponse};

/// How many expired entries one operation removes at most.
pub const SWEEP_BATCH: usize = 32;

/// How many distinct durations get a removal queue of their own in each shard.
pub const DURATION_QUEUES: usize = 8;

/// Many shards keep each map small: a map that grows doubles and rehashes under its
/// lock, and with a day's TTL a busy service holds millions of records.
const SHARDS: usize = 128;

/// How many entries an evicting store drops at most for one claim, when other claims
/// keep taking the room made.
const EVICTION_TRIES: usize = 4;

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
    /// Entries held, expired ones not yet swept included.
    entries: AtomicUsize,
    /// The most `entries` may reach.
    max_entries: AtomicUsize,
    /// Whether a full store makes room by dropping records (see `evicting`).
    evicting: AtomicBool,
}

impl Default for Inner {
    fn default() -> Self {
        Self {
            shards: (0..SHARDS).map(|_| Mutex::default()).collect(),
            hasher: RandomState::default(),
            next_token: AtomicU64::new(1),
            entries: AtomicUsize::new(0),
            max_entries: AtomicUsize::new(usize::MAX),
            evicting: AtomicBool::new(false),
        }
    }
}

impl Inner {
    /// Counts one more entry, if the limit allows it.
    fn admit(&self) -> bool {
        let max = self.max_entries.load(Ordering::Relaxed);
        self.entries
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| {
                (n < max).then_some(n + 1)
            })
            .is_ok()
    }

    /// Counts `removed` entries fewer.
    fn forget(&self, removed: usize) {
        if removed > 0 {
            self.entries.fetch_sub(removed, Ordering::Relaxed);
        }
    }
}

/// A claim of a new key that the limit refused, with the key's hash.
struct Full(Hash);

/// A key's hash, computed once per operation: it picks the shard and finds the entry.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
struct Hash(u64);

impl Hash {
    /// The shard: bits far above the ones a shard's table places its entries by, so
    /// that the keys of one shard still spread over its whole table.
    fn shard(self) -> usize {
        (self.0 >> 32) as usize % SHARDS
    }
}

#[derive(Default)]
struct Shard {
    /// Boxed: a table that grows moves 8-byte pointers under the shard's lock, not
    /// 120-byte entries, and each of its free slots costs 8 bytes. Under a load of new
    /// keys with a day's TTL, the slowest first executions were those waiting for such
    /// a move.
    entries: HashTable<Box<Entry>>,
    /// When to look at which entry again; stale removals (the entry was renewed,
    /// completed or replaced since) are skipped.
    removals: Removals,
    /// The header list last kept, shared by the records whose headers equal it.
    headers: Option<Arc<[Header]>>,
}

/// An entry to look at again when its deadline has passed. The key is the entry's own,
/// shared, so that renewing or completing an entry allocates nothing.
type Removal = (Instant, Hash, Arc<str>);

/// A shard's scheduled removals (see the module docs).
#[derive(Default)]
struct Removals {
    /// The earliest deadline of them all, kept here so that an operation that finds
    /// nothing due reads no queue.
    earliest: Option<Instant>,
    /// One queue per duration, each in deadline order.
    queues: Vec<(Duration, VecDeque<Removal>)>,
    /// Removals with a duration that has no queue, in deadline order.
    others: BinaryHeap<Reverse<Removal>>,
}

impl Removals {
    /// Schedules a look at `key` once `duration` has passed since `now`. The deadline is
    /// derived here, so that each queue stays in order.
    fn schedule(&mut self, now: Instant, duration: Duration, hash: Hash, key: Arc<str>) {
        let deadline = now + duration;
        if self.earliest.is_none_or(|earliest| deadline < earliest) {
            self.earliest = Some(deadline);
        }
        let removal = (deadline, hash, key);
        if let Some((_, queue)) = self.queues.iter_mut().find(|(d, _)| *d == duration) {
            queue.push_back(removal);
        } else if self.queues.len() < DURATION_QUEUES {
            self.queues.push((duration, VecDeque::from([removal])));
        } else {
            self.others.push(Reverse(removal));
        }
    }

    /// The next removal due by `now`, if any.
    fn next_due(&mut self, now: Instant) -> Option<Removal> {
        if self.earliest.is_none_or(|earliest| earliest > now) {
            return None;
        }
        let due = self.pop_due(now);
        if due.is_none() {
            self.earliest = self.recompute_earliest();
        }
        due
    }

    fn pop_due(&mut self, now: Instant) -> Option<Removal> {
        for (_, queue) in &mut self.queues {
            if queue.front().is_some_and(|(deadline, ..)| *deadline <= now) {
                return queue.pop_front();
            }
        }
        match self.others.peek() {
            Some(Reverse((deadline, ..))) if *deadline <= now => {
                self.others.pop().map(|Reverse(due)| due)
            }
            _ => None,
        }
    }

    /// The removal with the earliest deadline, due or not.
    fn pop_earliest(&mut self) -> Option<Removal> {
        let queued = self
            .queues
            .iter_mut()
            .filter_map(|(_, queue)| Some((queue.front()?.0, queue)))
            .min_by_key(|(deadline, _)| *deadline);
        let removal = match (queued, self.others.peek()) {
            (Some((deadline, _)), Some(Reverse(other))) if other.0 < deadline => {
                self.others.pop().map(|Reverse(removal)| removal)
            }
            (Some((_, queue)), _) => queue.pop_front(),
            (None, _) => self.others.pop().map(|Reverse(removal)| removal),
        };
        self.earliest = self.recompute_earliest();
        removal
    }

    fn recompute_earliest(&self) -> Option<Instant> {
        let fronts = self.queues.iter().filter_map(|(_, q)| q.front());
        let other = self.others.peek().map(|Reverse(removal)| removal);
        fronts.chain(other).map(|(deadline, ..)| *deadline).min()
    }
}

struct Entry {
    hash: Hash,
    key: Arc<str>,
    fingerprint: Fingerprint,
    token: FencingToken,
    deadline: Instant,
    response: Option<StoredResponse>,
}

impl Entry {
    /// Whether this is a live claim, in flight under `token`: what renewing, completing
    /// and releasing require.
    fn owned_by(&self, token: FencingToken, now: Instant) -> bool {
        self.token == token && self.response.is_none() && self.deadline > now
    }

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
            let Some(removal) = self.removals.next_due(now) else {
                break;
            };
            removed += usize::from(self.remove(removal));
        }
        removed
    }

    /// Removes the entry that expires first, live or not; `false` if there is none.
    fn evict(&mut self) -> bool {
        while let Some(removal) = self.removals.pop_earliest() {
            if self.remove(removal) {
                return true;
            }
        }
        false
    }

    /// Removes the entry `removal` was scheduled for, unless it is stale; whether it did.
    fn remove(&mut self, (deadline, hash, key): Removal) -> bool {
        // The same key allocation, not just the same key: a key released and claimed
        // again is a new entry, with removals of its own.
        let entry = self
            .entries
            .find_entry(hash.0, |e| Arc::ptr_eq(&e.key, &key));
        match entry {
            Ok(entry) if entry.get().deadline == deadline => {
                entry.remove();
                true
            }
            _ => false,
        }
    }

    /// The live entry under `key`, in flight under `token`, with its new deadline and
    /// its removal rescheduled; `false` if there is none.
    fn extend_owned(
        &mut self,
        hash: Hash,
        key: &str,
        token: FencingToken,
        now: Instant,
        duration: Duration,
        response: Option<&StoredResponse>,
    ) -> bool {
        let Some(entry) = self.entries.find_mut(hash.0, |e| *e.key == *key) else {
            return false;
        };
        let duration = duration.min(LONGEST);
        if !entry.owned_by(token, now) {
            return false;
        }
        entry.deadline = now + duration;
        if let Some(response) = response {
            entry.response = Some(response.to_kept(&mut self.headers));
        }
        let key = Arc::clone(&entry.key);
        self.removals.schedule(now, duration, hash, key);
        true
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
        self.inner.entries.load(Ordering::Relaxed)
    }

    /// Whether the store holds no entry.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Holds at most `max` entries; by default there is no limit.
    ///
    /// Expired entries count until they are swept. When the store is full, a claim of a
    /// new key first sweeps every expired entry and, if that frees nothing, fails with a
    /// [`StoreError`]: the protocol answers `503` with `Retry-After` and does not run the
    /// handler. Records are not evicted to make room (unless the store is
    /// [`evicting`](Self::evicting)), and keys the store holds are still answered (a
    /// replay, a `409`, a `422`). The limit is shared by the clones of the store. Size
    /// it from the rate of new keys times the longest TTL, with room to spare: a record
    /// takes a few hundred bytes plus its response's body.
    ///
    /// ```
    /// use std::time::Duration;
    /// use idempotent_runtime::{Claim, Fingerprint, MemoryStore, Store};
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() {
    /// let store = MemoryStore::new().with_max_entries(1);
    /// let fp = Fingerprint::of_bytes(b"body");
    /// let lease = Duration::from_secs(60);
    /// assert!(matches!(store.claim("a", fp, lease).await, Ok(Claim::Acquired(_))));
    /// assert!(matches!(store.claim("a", fp, lease).await, Ok(Claim::Existing(_))));
    /// assert!(store.claim("b", fp, lease).await.is_err(), "full");
    /// # }
    /// ```
    pub fn with_max_entries(self, max: usize) -> Self {
        self.inner.max_entries.store(max, Ordering::Relaxed);
        self
    }

    /// Makes room for a new key when the store is full: the entry that expires first in
    /// the new key's shard (one of 128, or the next shard that holds any) is dropped,
    /// even a live one. The store is then a cache of records, not a store that decides;
    /// by default a full store refuses new keys instead. The order is per shard: with a
    /// limit well above 128 and one TTL for all records, the store keeps about the `max`
    /// newest keys; with a smaller limit, some of the newest.
    ///
    /// This is for the fast tier of a [`TieredStore`](crate::store::TieredStore) in
    /// each replica, where a dropped copy costs the next retry of its key a round trip
    /// to the durable store, and nothing else: capped and evicting, it keeps the copies
    /// of the newest keys. Never let an evicting store decide on its own: a record
    /// dropped before its TTL lets a retry of its key run the handler again.
    ///
    /// Without [`with_max_entries`](Self::with_max_entries) nothing is evicted. The
    /// setting is shared by the clones of the store.
    ///
    /// ```
    /// use std::time::Duration;
    /// use idempotent_runtime::{Claim, Fingerprint, MemoryStore, Store};
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() {
    /// let store = MemoryStore::new().with_max_entries(1).evicting();
    /// let fp = Fingerprint::of_bytes(b"body");
    /// let lease = Duration::from_secs(60);
    /// assert!(matches!(store.claim("a", fp, lease).await, Ok(Claim::Acquired(_))));
    /// assert!(matches!(store.claim("b", fp, lease).await, Ok(Claim::Acquired(_))));
    /// assert!(store.lookup("a").await.unwrap().is_none(), "dropped for b");
    /// assert_eq!(store.len(), 1);
    /// # }
    /// ```
    pub fn evicting(self) -> Self {
        self.inner.evicting.store(true, Ordering::Relaxed);
        self
    }

    /// Whether the store is [`evicting`](Self::evicting).
    ///
    /// ```
    /// use idempotent_runtime::MemoryStore;
    /// assert!(!MemoryStore::new().is_evicting());
    /// assert!(MemoryStore::new().evicting().is_evicting());
    /// ```
    pub fn is_evicting(&self) -> bool {
        self.inner.evicting.load(Ordering::Relaxed)
    }

    /// The most entries the store holds; `usize::MAX` when there is no limit.
    ///
    /// ```
    /// use idempotent_runtime::MemoryStore;
    /// assert_eq!(MemoryStore::new().max_entries(), usize::MAX);
    /// assert_eq!(MemoryStore::new().with_max_entries(10).max_entries(), 10);
    /// ```
    pub fn max_entries(&self) -> usize {
        self.inner.max_entries.load(Ordering::Relaxed)
    }

    /// Removes every expired entry now; returns how many went.
    ///
    /// ```
    /// assert_eq!(idempotent_runtime::MemoryStore::new().purge_expired(), 0);
    /// ```
    pub fn purge_expired(&self) -> usize {
        let now = Instant::now();
        let removed = self
            .inner
            .shards
            .iter()
            .map(|s| lock(s).sweep(now, usize::MAX))
            .sum();
        self.inner.forget(removed);
        removed
    }

    /// Evicts an entry from the shard `from`, or else from the next one that has any;
    /// `false` if the store holds none.
    fn evict_from(&self, from: usize) -> bool {
        let shards = &self.inner.shards;
        let evicted = (0..SHARDS).any(|i| lock(&shards[(from + i) % SHARDS]).evict());
        if evicted {
            self.inner.forget(1);
        }
        evicted
    }

    /// The shard holding `key`, its expired entries swept as of `now`, and the key's hash.
    fn shard(&self, key: &str, now: Instant) -> (MutexGuard<'_, Shard>, Hash) {
        let hash = Hash(self.inner.hasher.hash_one(key));
        let mut shard = lock(&self.inner.shards[hash.shard()]);
        self.inner.forget(shard.sweep(now, SWEEP_BATCH));
        (shard, hash)
    }

    /// A claim, unless it is of a new key and the store is full.
    fn try_claim(
        &self,
        key: &str,
        fingerprint: Fingerprint,
        lease: Duration,
        now: Instant,
    ) -> Result<Claim, Full> {
        let (mut shard, hash) = self.shard(key, now);
        let slot = shard
            .entries
            .entry(hash.0, |e| *e.key == *key, |e| e.hash.0);
        let fresh = |key: Arc<str>| Entry {
            hash,
            key,
            fingerprint,
            token: FencingToken(self.inner.next_token.fetch_add(1, Ordering::Relaxed)),
            deadline: now + lease,
            response: None,
        };
        let (token, key) = match slot {
            Slot::Occupied(live) if live.get().deadline > now => {
                return Ok(Claim::Existing(live.get().record(now)));
            }
            // Lapsed but not swept yet: taken over in place, its key allocation reused.
            Slot::Occupied(mut lapsed) => {
                let entry = lapsed.get_mut();
                **entry = fresh(Arc::clone(&entry.key));
                (entry.token, Arc::clone(&entry.key))
            }
            Slot::Vacant(vacant) => {
                if !self.inner.admit() {
                    return Err(Full(hash));
                }
                let entry = vacant.insert(Box::new(fresh(Arc::from(key)))).into_mut();
                (entry.token, Arc::clone(&entry.key))
            }
        };
        shard.removals.schedule(now, lease, hash, key);
        Ok(Claim::Acquired(token))
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
        let lease = lease.min(LONGEST);
        let now = Instant::now();
        let mut claimed = self.try_claim(key, fingerprint, lease, now);
        if self.is_evicting() {
            // Full: the claim's shard has swept what had expired there; drop what
            // expires first. Another claim may take the room first, so a few tries.
            for _ in 0..EVICTION_TRIES {
                let Err(Full(hash)) = claimed else { break };
                if !self.evict_from(hash.shard()) {
                    break;
                }
                claimed = self.try_claim(key, fingerprint, lease, now);
            }
        }
        let claimed = claimed.or_else(|Full(_)| {
            // Full: make room from what has expired, in every shard, then try again.
            self.purge_expired();
            self.try_claim(key, fingerprint, lease, now)
        });
        ready(claimed.map_err(|Full(_)| {
            StoreError::new(format!(
                "the memory store is full: it holds its limit of {} entries, none of them expired, so no new key can be claimed",
                self.max_entries()
            ))
        }))
    }

    fn renew(
        &self,
        key: &str,
        token: FencingToken,
        lease: Duration,
    ) -> impl Future<Output = Result<bool, StoreError>> + Send {
        let now = Instant::now();
        let (mut shard, hash) = self.shard(key, now);
        ready(Ok(shard.extend_owned(hash, key, token, now, lease, None)))
    }

    fn complete(
        &self,
        key: &str,
        token: FencingToken,
        response: &StoredResponse,
        ttl: Duration,
    ) -> impl Future<Output = Result<bool, StoreError>> + Send {
        let now = Instant::now();
        let (mut shard, hash) = self.shard(key, now);
        ready(Ok(shard.extend_owned(
            hash,
            key,
            token,
            now,
            ttl,
            Some(response),
        )))
    }

    fn release(
        &self,
        key: &str,
        token: FencingToken,
    ) -> impl Future<Output = Result<bool, StoreError>> + Send {
        let now = Instant::now();
        let (mut shard, hash) = self.shard(key, now);
        let owned = shard.entries.find_entry(hash.0, |e| *e.key == *key);
        let released = match owned {
            Ok(entry) if entry.get().owned_by(token, now) => {
                entry.remove();
                self.inner.forget(1);
                true
            }
            _ => false,
        };
        ready(Ok(released))
    }

    fn lookup(&self, key: &str) -> impl Future<Output = Result<Option<Record>, StoreError>> + Send {
        let now = Instant::now();
        let (shard, hash) = self.shard(key, now);
        let record = shard
            .entries
            .find(hash.0, |e| *e.key == *key)
            .filter(|e| e.deadline > now)
            .map(|e| e.record(now));
        ready(Ok(record))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn done(status: http::StatusCode) -> StoredResponse {
        StoredResponse::new(
            status,
            http::HeaderMap::new(),
            bytes::Bytes::from_static(b"done"),
        )
    }

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
    async fn a_lapsed_claim_not_yet_swept_is_taken_over_in_place() {
        let store = MemoryStore::new();
        let fp = Fingerprint::of_bytes(b"x");
        let second = Duration::from_secs(1);
        let shard_of = |key: &str| Hash(store.inner.hasher.hash_one(key)).shard();
        // More lapsed entries ahead of `k` in its shard than one operation sweeps.
        let ahead: Vec<String> = (0..)
            .map(|i| format!("f{i}"))
            .filter(|key| shard_of(key) == shard_of("k"))
            .take(SWEEP_BATCH + 8)
            .collect();
        for key in &ahead {
            store.claim(key, fp, second).await.unwrap();
        }
        let Claim::Acquired(lapsed) = store.claim("k", fp, second).await.unwrap() else {
            panic!("a new key is acquired");
        };
        tokio::time::advance(2 * second).await;

        let Claim::Acquired(token) = store.claim("k", fp, second).await.unwrap() else {
            panic!("a lapsed claim is taken over");
        };
        assert_ne!(token, lapsed);
        let response = done(http::StatusCode::OK);
        let day = Duration::from_secs(86_400);
        assert!(!store.complete("k", lapsed, &response, day).await.unwrap());
        assert!(store.complete("k", token, &response, day).await.unwrap());
        // The other lapsed entries go; the lapsed claim's removal is stale.
        store.purge_expired();
        assert_eq!(store.len(), 1);
        assert!(matches!(
            store.lookup("k").await.unwrap(),
            Some(Record::Completed { .. })
        ));
    }

    #[tokio::test(start_paused = true)]
    async fn a_completed_entry_lives_its_ttl_not_its_lease() {
        let store = MemoryStore::new();
        let fp = Fingerprint::of_bytes(b"x");
        let Claim::Acquired(token) = store.claim("k", fp, Duration::from_secs(1)).await.unwrap()
        else {
            panic!("a new key is acquired");
        };
        let response = done(http::StatusCode::CREATED);
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

    #[tokio::test(start_paused = true)]
    async fn a_full_store_refuses_new_keys_and_still_answers_the_ones_it_holds() {
        let store = MemoryStore::new().with_max_entries(2);
        let fp = Fingerprint::of_bytes(b"x");
        let lease = Duration::from_secs(10);
        let Claim::Acquired(a) = store.claim("a", fp, lease).await.unwrap() else {
            panic!("a new key is acquired");
        };
        let response = done(http::StatusCode::CREATED);
        let day = Duration::from_secs(86_400);
        assert!(store.complete("a", a, &response, day).await.unwrap());
        let Claim::Acquired(b) = store.claim("b", fp, lease).await.unwrap() else {
            panic!("a new key is acquired");
        };

        let err = store.claim("c", fp, lease).await.unwrap_err();
        assert!(err.to_string().contains("limit of 2 entries"), "{err}");
        assert_eq!(store.len(), 2, "a refused claim leaves nothing behind");
        assert!(matches!(
            store.claim("a", fp, lease).await.unwrap(),
            Claim::Existing(Record::Completed { .. })
        ));
        assert!(matches!(
            store.claim("b", fp, lease).await.unwrap(),
            Claim::Existing(Record::InFlight { .. })
        ));

        // A release makes room at once.
        assert!(store.release("b", b).await.unwrap());
        assert!(matches!(
            store.claim("c", fp, lease).await.unwrap(),
            Claim::Acquired(_)
        ));
        assert!(store.claim("d", fp, lease).await.is_err());

        // So does a lease that lapsed, though no operation has swept its shard yet.
        tokio::time::advance(lease + Duration::from_secs(1)).await;
        assert!(matches!(
            store.claim("d", fp, lease).await.unwrap(),
            Claim::Acquired(_)
        ));
        assert_eq!(store.len(), 2, "the completed record and the new claim");
    }

    /// Keys that land in one shard of `store`, and one that lands in another.
    fn keys_of_one_shard(store: &MemoryStore, n: usize) -> (Vec<String>, String) {
        let shard = |key: &str| Hash(store.inner.hasher.hash_one(key)).shard();
        let keys: Vec<String> = (0..)
            .map(|i| format!("k{i}"))
            .filter(|k| shard(k) == shard("k0"))
            .take(n)
            .collect();
        let other = (0..)
            .map(|i| format!("o{i}"))
            .find(|k| shard(k) != shard("k0"))
            .unwrap();
        (keys, other)
    }

    #[tokio::test(start_paused = true)]
    async fn a_full_evicting_store_drops_what_expires_first() {
        let store = MemoryStore::new().with_max_entries(2).evicting();
        let (keys, other) = keys_of_one_shard(&store, 3);
        let fp = Fingerprint::of_bytes(b"x");
        let lease = Duration::from_secs(1);
        let response = done(http::StatusCode::CREATED);
        // The older record outlives the newer one.
        for (key, ttl) in [(&keys[0], 30), (&keys[1], 10)] {
            let Claim::Acquired(token) = store.claim(key, fp, lease).await.unwrap() else {
                panic!("a new key is acquired");
            };
            let ttl = Duration::from_secs(ttl);
            assert!(store.complete(key, token, &response, ttl).await.unwrap());
        }

        let claim = store.claim(&keys[2], fp, lease).await.unwrap();
        assert!(matches!(claim, Claim::Acquired(_)), "room was made");
        assert!(store.lookup(&keys[1]).await.unwrap().is_none());
        assert!(store.lookup(&keys[0]).await.unwrap().is_some());
        assert_eq!(store.len(), 2);

        // A key of a shard that holds nothing takes the room of one in another shard:
        // the claim in flight, whose lease ends before the record's TTL.
        let claim = store.claim(&other, fp, lease).await.unwrap();
        assert!(matches!(claim, Claim::Acquired(_)));
        assert!(store.lookup(&keys[2]).await.unwrap().is_none());
        assert!(store.lookup(&keys[0]).await.unwrap().is_some());
        assert_eq!(store.len(), 2);
    }

    #[tokio::test(start_paused = true)]
    async fn an_evicting_store_stays_within_its_limit() {
        let store = MemoryStore::new().with_max_entries(64).evicting();
        let fp = Fingerprint::of_bytes(b"x");
        let lease = Duration::from_secs(1);
        let ttl = Duration::from_secs(600);
        let response = done(http::StatusCode::CREATED);
        for i in 0..1000 {
            let key = format!("k{i}");
            let Claim::Acquired(token) = store.claim(&key, fp, lease).await.unwrap() else {
                panic!("claim {i} of a new key is acquired");
            };
            assert!(store.complete(&key, token, &response, ttl).await.unwrap());
            assert!(store.len() <= 64, "{} entries after {i}", store.len());
            tokio::time::advance(Duration::from_millis(1)).await;
        }
        assert_eq!(store.len(), 64);
        assert!(store.lookup("k999").await.unwrap().is_some());
    }

    /// Claims racing on other threads evict each other's room: the count the limit is
    /// kept by still matches the entries held, and never passes the limit.
    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn concurrent_evictions_keep_the_count_true() {
        const MAX: usize = 100;
        let store = MemoryStore::new().with_max_entries(MAX).evicting();
        let fp = Fingerprint::of_bytes(b"x");
        let hour = Duration::from_secs(3600);
        let response = done(http::StatusCode::CREATED);
        let tasks: Vec<_> = (0..8)
            .map(|t| {
                let (store, response) = (store.clone(), response.clone());
                tokio::spawn(async move {
                    for i in 0..1000 {
                        let key = format!("t{t}-{i}");
                        if let Ok(Claim::Acquired(token)) = store.claim(&key, fp, hour).await
                            && i % 2 == 0
                        {
                            store.complete(&key, token, &response, hour).await.unwrap();
                        }
                        assert!(store.len() <= MAX, "{} entries", store.len());
                    }
                })
            })
            .collect();
        for task in tasks {
            task.await.unwrap();
        }
        let mut held = 0;
        for t in 0..8 {
            for i in 0..1000 {
                held += usize::from(store.lookup(&format!("t{t}-{i}")).await.unwrap().is_some());
            }
        }
        assert_eq!(store.len(), held);
        assert!(held > MAX / 2, "the store stays about full: {held}");
    }

    #[tokio::test(start_paused = true)]
    async fn the_count_follows_every_way_an_entry_goes() {
        let store = MemoryStore::new();
        let fp = Fingerprint::of_bytes(b"x");
        let second = Duration::from_secs(1);
        let mut tokens = Vec::new();
        for i in 0..300 {
            if let Claim::Acquired(token) = store.claim(&format!("k{i}"), fp, second).await.unwrap()
            {
                tokens.push(token);
            }
        }
        assert_eq!(store.len(), 300);
        for (i, token) in tokens.iter().enumerate().take(100) {
            assert!(store.release(&format!("k{i}"), *token).await.unwrap());
        }
        assert_eq!(store.len(), 200);
        tokio::time::advance(2 * second).await;
        // Swept a batch at a time by other operations, then the rest at once.
        for i in 0..50 {
            store.lookup(&format!("other{i}")).await.unwrap();
        }
        let left = store.len();
        assert!(left < 200, "sweeping made no progress: {left}");
        assert_eq!(store.purge_expired(), left);
        assert_eq!(store.len(), 0);
        // Taking over a lapsed entry in place counts it once.
        store.claim("k", fp, second).await.unwrap();
        tokio::time::advance(2 * second).await;
        store.claim("k", fp, second).await.unwrap();
        assert_eq!(store.len(), 1);
    }
}
