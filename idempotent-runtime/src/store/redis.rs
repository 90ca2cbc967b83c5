//! The Redis store: single node or Redis Cluster, one round trip per step.
//!
//! Several replicas of an app share one Redis, and the guarantee holds across all of
//! them: one claim wins, everybody else sees it in flight or replays its response.
//!
//! ```no_run
//! use axum::{Router, routing::post};
//! use idempotent_runtime::{Idempotency, RedisStore, idempotent};
//!
//! #[idempotent(ttl = "24h")]
//! async fn create_order() -> &'static str {
//!     "created"
//! }
//!
//! # #[tokio::main]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! // Single node; `RedisStore::connect_cluster(["redis://10.0.0.1:7000", ...])` for a Cluster.
//! let store = RedisStore::connect("redis://127.0.0.1:6379").await?;
//! let app: Router = Router::new()
//!     .route("/orders", post(create_order))
//!     .with_state(Idempotency::new(store));
//! # let _ = app;
//! # Ok(()) }
//! ```
//!
//! # Connections
//!
//! [`RedisStore::new`] takes a [`ConnectionManager`], which reconnects by itself after
//! the server went away; [`RedisStore::cluster`] takes the async Cluster client's
//! [`ClusterConnection`], which follows slot moves and failovers. Both are multiplexed:
//! one connection serves every concurrent request, and cloning the store is cheap.
//! [`RedisStore::connect`] and [`RedisStore::connect_cluster`] build them from URLs.
//! The [`redis`] crate is re-exported, so the version always matches.
//!
//! While Redis is unreachable every operation fails with a [`StoreError`], which the
//! protocol turns into `503` with the handler not run; once Redis is back, the same
//! store works again, without a restart of the app.
//!
//! A claim that fails may still have reached Redis, or run there later: it got no answer
//! (a response timeout, a dropped connection), or the Cluster client sent it again after
//! an attempt that took effect and reports only the last attempt's error. So the store
//! then releases it by its token before failing, rather than leave a claim nobody will
//! complete to answer `409` until its lease lapses; and a claim that finds its own
//! in-flight record (a command the client sent again) is granted.
//!
//! # Key layout
//!
//! Everything about one idempotency key lives in one Redis string,
//! `<prefix>:{<key>}` (prefix `idempotent` unless [`with_prefix`](RedisStore::with_prefix)
//! says otherwise; `<key>` is the key the protocol derives, a hex SHA-256). The braces are
//! a Cluster hash tag: the slot depends on the key alone, never on the prefix.
//!
//! The string's first byte tells the state, and the 32 raw bytes of the request's
//! SHA-256 fingerprint follow it:
//!
//! | state | bytes |
//! | --- | --- |
//! | in flight | `I`, fingerprint, fencing token (8), lease deadline (8), lease length (8) |
//! | completed | `C`, fingerprint, the response as [`StoredResponse::to_bytes`] writes it |
//!
//! Numbers are big-endian; the deadline is in milliseconds since the Unix epoch, by the
//! clock of the replica that claimed or renewed.
//!
//! The key's own expiry is the clock: while in flight it is the **lease** (set at
//! claim, again at every renewal), so a crashed owner's claim disappears by itself;
//! completion replaces it with the **TTL**, independent of the lease. Redis removes
//! expired records; there is nothing to clean up. The deadline in the record serves
//! only the lease left that an in-flight record reports (`Record::InFlight`, which
//! `once` passes on as [`OnceError::InFlight`](crate::once::OnceError::InFlight)),
//! clamped to the lease's length, so a replica whose clock is off skews that figure and
//! nothing else.
//!
//! Every record has an expiry, so a Redis that evicts keys when it runs out of memory
//! (any `maxmemory-policy` but the default, `noeviction`) may drop a claim in flight
//! and let a duplicate run the handler, or drop a response before its TTL. Give the
//! records a Redis that does not evict: with `noeviction` a full Redis fails the claim
//! instead, and the protocol answers `503`.
//!
//! The guarantee is as durable as the Redis that holds the records. A Redis that
//! restarts without persistence (`appendonly no`, no snapshot) forgets every claim and
//! response; so does a failover to a replica that had not yet received the last writes,
//! since Redis replicates asynchronously. A retry that arrives after either runs the
//! handler again. Where that matters (payments), run Redis with `appendonly yes` and
//! `appendfsync everysec` or stricter, or keep the records in Postgres, alone or behind
//! Redis with [`TieredStore`](crate::store::TieredStore).
//!
//! # One round trip per step
//!
//! **claim** is a single native command, with no script:
//!
//! ```text
//! SET <prefix>:{<key>} <in-flight record> NX GET PX <lease>
//! ```
//!
//! It creates the in-flight record if the key is free and answers nil, or changes
//! nothing and answers the record that is there: a replay, a `409` or a `422` costs one
//! command that Redis runs about as fast as a `GET`. **lookup** is a `GET`. `SET` with
//! both `NX` and `GET` needs Redis 7.0 or later: [`load_scripts`](RedisStore::load_scripts),
//! which [`connect`](RedisStore::connect) and
//! [`connect_cluster`](RedisStore::connect_cluster) run, fails on an older server with
//! its version in the error.
//!
//! **renew**, **complete** and **release** act only on the owner's in-flight record, a
//! check-and-set that takes a Lua script, run with `EVALSHA` (the scripts are loaded
//! once per server; [`connect`](RedisStore::connect) loads them up front, and after a
//! server restart the first call loads them again). Scripts run atomically, so no
//! other client can interleave with them:
//!
//! ```lua
#![doc = include_str!("redis/renew.lua")]
#![doc = include_str!("redis/complete.lua")]
#![doc = include_str!("redis/release.lua")]
//! ```
//!
//! A first execution costs two commands (claim, complete), a replay or a conflict one,
//! and a handler slower than a third of the lease one more per renewal.
//!
//! # Commands sent together
//!
//! On a single server, the commands that requests issue in the same turn of the tokio
//! scheduler (claims, lookups, and the scripts of renewals, completions and releases)
//! go to Redis together, as one pipeline. The first command of a turn starts a task
//! that yields once; the requests that run meanwhile queue their commands behind it;
//! the task then sends them all in one write and hands each request its own answer (a
//! command that fails, fails its own request alone). The connection is multiplexed
//! either way, but without this each command went out in a write of its own: a system
//! call per command, and on loopback the receiving side's work as well. Under load, with 32
//! connections on one worker thread, Redis replays went from about 0.8 writes to Redis
//! per request to about 0.1, and served from a tenth to two thirds more requests a
//! second in back-to-back runs on a noisy two-core machine. A request alone in its turn
//! pays for a task that sends its command. The batch goes out from that task whatever
//! becomes of the request that started it; a command whose own request is given up
//! before its turn ends is not sent at all. A turn whose task never runs (its runtime
//! shut down first) fails its commands with an error rather than holding up the store:
//! the next command, from another runtime say, starts a turn of its own. On a Cluster,
//! every command is sent on its own.
//!
//! # Fencing tokens
//!
//! The token is drawn by the client ([`FencingToken::random`], 64 random bits) and
//! written into the claim, rather than counted by Redis. A counter kept in the record would
//! start over whenever the record is deleted (release, lease lapse), so a stale owner
//! could hold the same number as the next claim and complete it; a counter that outlives
//! records would be a key in another Cluster slot, which a script may not touch. A random
//! token needs no state at all; a stale owner matches a later claim's token with
//! probability 2⁻⁶⁴.
//!
//! # Corrupt data
//!
//! A record that is not what this store writes (another type under the key, an unknown
//! state, a record cut short, a response that does not decode) is reported as a
//! [`StoreError`] by claim and lookup, so the protocol fails closed on it. Renew,
//! complete and release fail on another type under the key, and leave a corrupt string
//! as it is: it holds no claim of theirs.

use std::fmt;
use std::future::Future;
use std::sync::{Arc, LazyLock};
use std::time::Duration;

use ::redis::aio::{ConnectionManager, ConnectionManagerConfig};
use ::redis::cluster::ClusterClient;
use ::redis::cluster_async::ClusterConnection;
use ::redis::{
    Client, Cmd, ErrorKind, IntoConnectionInfo, RedisError, Script, ServerErrorKind, Value,
};
use bytes::Bytes;

use super::{Claim, FencingToken, Record, Store, StoreError};
use crate::{Fingerprint, StoredResponse};

mod batch;
use batch::Batch;

static RENEW: LazyLock<Script> = LazyLock::new(|| Script::new(include_str!("redis/renew.lua")));
static COMPLETE: LazyLock<Script> =
    LazyLock::new(|| Script::new(include_str!("redis/complete.lua")));
static RELEASE: LazyLock<Script> = LazyLock::new(|| Script::new(include_str!("redis/release.lua")));

/// An idempotency store in Redis, single node or Cluster.
///
/// Cloning is cheap and shares the connection. See the [module docs](self) for the
/// key layout and the scripts.
///
/// ```
/// use idempotent_runtime::RedisStore;
/// use idempotent_runtime::redis::{Client, aio::{ConnectionManager, ConnectionManagerConfig}};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), idempotent_runtime::redis::RedisError> {
/// // A connection manager with your own settings (this one connects on first use).
/// let client = Client::open("redis://127.0.0.1:6379")?;
/// let manager = ConnectionManager::new_lazy_with_config(client, ConnectionManagerConfig::new())?;
/// let store = RedisStore::new(manager).with_prefix("shop");
/// assert_eq!(store.prefix(), "shop");
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct RedisStore {
    connection: Connection,
    prefix: Arc<str>,
}

#[derive(Clone)]
enum Connection {
    /// Commands are sent in batches (see "Commands sent together").
    Single(ConnectionManager, Batch),
    Cluster(ClusterConnection),
}

impl fmt::Debug for RedisStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let kind = match self.connection {
            Connection::Single(..) => "single node",
            Connection::Cluster(_) => "cluster",
        };
        f.debug_struct("RedisStore")
            .field("connection", &kind)
            .field("prefix", &self.prefix)
            .finish()
    }
}

impl RedisStore {
    /// The prefix of every record's key unless [`with_prefix`](Self::with_prefix) sets
    /// another.
    pub const DEFAULT_PREFIX: &'static str = "idempotent";

    /// A store on one Redis server, over a connection manager that reconnects by itself.
    ///
    /// The scripts are loaded on first use; call [`load_scripts`](Self::load_scripts)
    /// to do it up front.
    pub fn new(connection: ConnectionManager) -> Self {
        Self::with_connection(Connection::Single(connection, Batch::default()))
    }

    /// A store on a Redis Cluster, over the async Cluster client's connection.
    ///
    /// ```no_run
    /// use idempotent_runtime::RedisStore;
    /// use idempotent_runtime::redis::cluster::ClusterClient;
    ///
    /// # #[tokio::main]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let client = ClusterClient::builder(["redis://10.0.0.1:7000", "redis://10.0.0.2:7000"])
    ///     .retries(3)
    ///     .build()?;
    /// let store = RedisStore::cluster(client.get_async_connection().await?);
    /// store.load_scripts().await?;
    /// # Ok(()) }
    /// ```
    pub fn cluster(connection: ClusterConnection) -> Self {
        Self::with_connection(Connection::Cluster(connection))
    }

    fn with_connection(connection: Connection) -> Self {
        Self {
            connection,
            prefix: Arc::from(Self::DEFAULT_PREFIX),
        }
    }

    /// Connects to one Redis server (`redis://[user:password@]host[:port][/db]`) and
    /// loads the scripts.
    ///
    /// The connection manager retries a lost connection with exponential backoff capped
    /// at one second, so the store is back within about a second of Redis. Otherwise it
    /// has the `redis` crate's defaults, among them a 1 s connection timeout and a 500 ms
    /// response timeout (the shorter of it and
    /// [`Idempotency::with_store_timeout`](crate::Idempotency::with_store_timeout) is what
    /// counts); for other settings build a [`ConnectionManager`] and use [`new`](Self::new).
    ///
    /// ```no_run
    /// # #[tokio::main]
    /// # async fn main() -> Result<(), idempotent_runtime::StoreError> {
    /// let store = idempotent_runtime::RedisStore::connect("redis://127.0.0.1:6379").await?;
    /// # let _ = store;
    /// # Ok(()) }
    /// ```
    pub async fn connect(url: impl IntoConnectionInfo) -> Result<Self, StoreError> {
        let client = Client::open(url).map_err(|e| error("invalid Redis URL", e))?;
        let config = ConnectionManagerConfig::new().set_max_delay(Duration::from_secs(1));
        let manager = ConnectionManager::new_with_config(client, config)
            .await
            .map_err(|e| error("cannot connect to Redis", e))?;
        let store = Self::new(manager);
        store.load_scripts().await?;
        Ok(store)
    }

    /// Connects to a Redis Cluster through any of its nodes and loads the scripts on
    /// every master.
    ///
    /// The client has the `redis` crate's Cluster defaults: a 1 s connection timeout,
    /// retries through slot moves and failovers, and no response timeout, so that what
    /// bounds an operation on a node that stopped answering is
    /// [`Idempotency::with_store_timeout`](crate::Idempotency::with_store_timeout). For
    /// other settings build the connection yourself and pass it to
    /// [`cluster`](Self::cluster).
    ///
    /// ```no_run
    /// # #[tokio::main]
    /// # async fn main() -> Result<(), idempotent_runtime::StoreError> {
    /// let store = idempotent_runtime::RedisStore::connect_cluster([
    ///     "redis://127.0.0.1:7000",
    ///     "redis://127.0.0.1:7001",
    /// ])
    /// .await?;
    /// # let _ = store;
    /// # Ok(()) }
    /// ```
    pub async fn connect_cluster<T: IntoConnectionInfo>(
        nodes: impl IntoIterator<Item = T>,
    ) -> Result<Self, StoreError> {
        let client =
            ClusterClient::new(nodes).map_err(|e| error("invalid Redis Cluster URL", e))?;
        let connection = client
            .get_async_connection()
            .await
            .map_err(|e| error("cannot connect to Redis Cluster", e))?;
        let store = Self::cluster(connection);
        store.load_scripts().await?;
        Ok(store)
    }

    /// Puts every record under `prefix` instead of [`DEFAULT_PREFIX`](Self::DEFAULT_PREFIX),
    /// so that several apps (or test runs) share a server without seeing each other's keys.
    ///
    /// Keep braces out of it: a `{` in the prefix would make the prefix the Cluster hash
    /// tag and put every record in one slot.
    pub fn with_prefix(mut self, prefix: impl Into<String>) -> Self {
        self.prefix = Arc::from(prefix.into());
        self
    }

    /// The prefix of every record's key.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// The Redis key of the record for `key`: `<prefix>:{<key>}`, the braces making the
    /// key alone pick the Cluster slot.
    ///
    /// ```
    /// # use idempotent_runtime::RedisStore;
    /// # use idempotent_runtime::redis::{Client, aio::{ConnectionManager, ConnectionManagerConfig}};
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), idempotent_runtime::redis::RedisError> {
    /// # let client = Client::open("redis://127.0.0.1:6379")?;
    /// # let manager = ConnectionManager::new_lazy_with_config(client, ConnectionManagerConfig::new())?;
    /// let store = RedisStore::new(manager);
    /// assert_eq!(store.record_key("3f1c"), "idempotent:{3f1c}");
    /// assert_eq!(store.with_prefix("shop").record_key("3f1c"), "shop:{3f1c}");
    /// # Ok(()) }
    /// ```
    pub fn record_key(&self, key: &str) -> String {
        // Built at its final size: `format!` sizes its string by the literal parts and
        // grew it several times on every operation.
        let mut record_key = String::with_capacity(self.prefix.len() + key.len() + 3);
        record_key.push_str(&self.prefix);
        record_key.push_str(":{");
        record_key.push_str(key);
        record_key.push('}');
        record_key
    }

    /// Loads the scripts into the server (every master of a Cluster), so that no request
    /// pays for loading them. Also a cheap check that Redis answers, and that it is Redis
    /// 7.0 or later: an older server fails here, with its version in the error, rather
    /// than on every claim.
    ///
    /// Not required: a script the server does not know is loaded on first use. A server
    /// that does not answer `INFO server` (a managed Redis may rename it) is not checked.
    pub async fn load_scripts(&self) -> Result<(), StoreError> {
        let mut info = ::redis::cmd("INFO");
        info.arg("server");
        if let Ok(reply) = self.query(info).await {
            check_version(&reply)?;
        }
        for script in [&RENEW, &COMPLETE, &RELEASE] {
            let invocation = script.prepare_invoke();
            let loaded = match &self.connection {
                Connection::Single(c, _) => invocation.load_async(&mut c.clone()).await,
                Connection::Cluster(c) => invocation.load_async(&mut c.clone()).await,
            };
            loaded.map_err(|e| error("cannot load the scripts into Redis", e))?;
        }
        Ok(())
    }

    /// Runs `script` on `record_key` with `args`. On a single server it goes as `EVALSHA`
    /// with the turn's other commands (see "Commands sent together"); a server that does
    /// not know the script (restarted, or `SCRIPT FLUSH`ed) gets it loaded and is asked
    /// again. The Cluster client does the same by itself.
    async fn run_script(
        &self,
        script: &Script,
        record_key: &str,
        args: &[&[u8]],
    ) -> Result<Value, RedisError> {
        match &self.connection {
            Connection::Single(c, batch) => {
                let command = || {
                    let mut command = ::redis::cmd("EVALSHA");
                    command.arg(script.get_hash()).arg(1).arg(record_key);
                    for arg in args {
                        command.arg(*arg);
                    }
                    command
                };
                match batch.query(c, command()).await {
                    Err(err) if err.kind() == ErrorKind::Server(ServerErrorKind::NoScript) => {
                        script.prepare_invoke().load_async(&mut c.clone()).await?;
                        batch.query(c, command()).await
                    }
                    answer => answer,
                }
            }
            Connection::Cluster(c) => {
                let mut invocation = script.key(record_key);
                for arg in args {
                    invocation.arg(*arg);
                }
                invocation.invoke_async(&mut c.clone()).await
            }
        }
    }

    async fn query(&self, command: Cmd) -> Result<Value, RedisError> {
        match &self.connection {
            Connection::Single(c, batch) => batch.query(c, command).await,
            Connection::Cluster(c) => command.query_async(&mut c.clone()).await,
        }
    }

    async fn release_token(
        &self,
        record_key: &str,
        token: FencingToken,
    ) -> Result<bool, StoreError> {
        let token = token.0.to_be_bytes();
        self.owner_step("release", &RELEASE, record_key, &[&token])
            .await
    }

    /// Runs one of renew/complete/release, which answer `1` (done) or `0` (not the owner).
    async fn owner_step(
        &self,
        what: &'static str,
        script: &Script,
        record_key: &str,
        args: &[&[u8]],
    ) -> Result<bool, StoreError> {
        match self.run_script(script, record_key, args).await {
            Ok(Value::Int(1)) => Ok(true),
            Ok(Value::Int(0)) => Ok(false),
            Ok(other) => Err(corrupt(
                record_key,
                &format!("{what} answered {} instead of 0 or 1", describe(&other)),
            )),
            Err(err) => Err(error(&format!("Redis {what} failed"), err)),
        }
    }
}

/// Milliseconds for `PEXPIRE`: at least 1 (0 would delete the key), and far enough below
/// `i64::MAX` that Redis can add the current time to it.
fn millis(duration: Duration) -> u64 {
    duration.as_millis().clamp(1, (i64::MAX / 4) as u128) as u64
}

fn error(message: &str, source: RedisError) -> StoreError {
    StoreError::from_source(message.to_owned(), source)
}

fn corrupt(record_key: &str, what: &str) -> StoreError {
    StoreError::new(format!(
        "corrupt idempotency record at Redis key `{record_key}`: {what}"
    ))
}

/// A short account of a value read back, for error messages.
fn describe(value: &Value) -> String {
    match value {
        Value::BulkString(bytes) => {
            let text = String::from_utf8_lossy(&bytes[..bytes.len().min(32)]);
            format!("{text:?}")
        }
        Value::Array(items) => format!("an array of {} items", items.len()),
        other => format!("{other:?}"),
    }
}

/// The first byte of an in-flight record.
const IN_FLIGHT: u8 = b'I';
/// The first byte of a completed record.
const COMPLETED: u8 = b'C';

/// Milliseconds since the Unix epoch, by this machine's clock.
fn unix_millis() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// The end of an in-flight record: the lease's deadline and its length.
fn lease_fields(lease: Duration) -> [u8; 16] {
    let length = millis(lease);
    let mut fields = [0; 16];
    fields[..8].copy_from_slice(&unix_millis().saturating_add(length).to_be_bytes());
    fields[8..].copy_from_slice(&length.to_be_bytes());
    fields
}

/// The record a claim writes (see the key layout in the module docs).
fn in_flight_record(fingerprint: &Fingerprint, token: FencingToken, lease: Duration) -> Vec<u8> {
    let mut record = Vec::with_capacity(57);
    record.push(IN_FLIGHT);
    record.extend_from_slice(fingerprint.as_bytes());
    record.extend_from_slice(&token.0.to_be_bytes());
    record.extend_from_slice(&lease_fields(lease));
    record
}

/// Whether a claim's `reply` is the very record it wrote, `sent`: its token is drawn at
/// random for each claim, so no other claim's record is the same.
fn is_own_claim(reply: &Value, sent: &[u8]) -> bool {
    matches!(reply, Value::BulkString(bytes) if bytes[..] == *sent)
}

/// Reads a record as claim and lookup find it, `now` being [`unix_millis`].
fn parse_record(record_key: &str, bytes: Vec<u8>, now: u64) -> Result<Record, StoreError> {
    let Some((&state, rest)) = bytes.split_first() else {
        return Err(corrupt(record_key, "the record is empty"));
    };
    let Some((fingerprint, rest)) = rest.split_first_chunk::<32>() else {
        return Err(corrupt(
            record_key,
            "the record is too short for a fingerprint",
        ));
    };
    let fingerprint = Fingerprint::from_bytes(*fingerprint);
    match state {
        IN_FLIGHT => {
            let fields: &[u8; 24] = rest.try_into().map_err(|_| {
                corrupt(
                    record_key,
                    &format!("an in-flight record of {} bytes instead of 57", bytes.len()),
                )
            })?;
            let number = |at: usize| {
                let mut be = [0; 8];
                be.copy_from_slice(&fields[at..at + 8]);
                u64::from_be_bytes(be)
            };
            let (deadline, length) = (number(8), number(16));
            // Redis holds the key, so the lease is live whatever this clock says.
            let left = deadline.saturating_sub(now).clamp(1, length.max(1));
            Ok(Record::InFlight {
                fingerprint,
                lease_remaining: Duration::from_millis(left),
            })
        }
        COMPLETED => {
            // The body stays in the `Vec` the reply was decoded into: no second copy.
            let response_at = bytes.len() - rest.len();
            let response = StoredResponse::from_shared(Bytes::from(bytes).slice(response_at..))
                .map_err(|e| corrupt(record_key, &e.to_string()))?;
            Ok(Record::Completed {
                fingerprint,
                response,
            })
        }
        other => Err(corrupt(
            record_key,
            &format!("unknown state {:?}", char::from(other)),
        )),
    }
}

/// Reads what `SET ... NX GET` or `GET` answered: nil for no record.
fn read_reply(record_key: &str, what: &str, reply: Value) -> Result<Option<Record>, StoreError> {
    match reply {
        Value::Nil => Ok(None),
        Value::BulkString(bytes) => parse_record(record_key, bytes, unix_millis()).map(Some),
        other => Err(corrupt(
            record_key,
            &format!("{what} answered {}", describe(&other)),
        )),
    }
}

/// The oldest Redis that runs `SET` with both `NX` and `GET`.
const MIN_VERSION: (u32, u32) = (7, 0);

/// Fails if `INFO server` (one node's text, or a Cluster's answers from several nodes)
/// names a `redis_version` older than [`MIN_VERSION`]. A reply without a version it can
/// read passes: the claim's own error still names the version needed.
fn check_version(reply: &Value) -> Result<(), StoreError> {
    match reply {
        Value::BulkString(bytes) => check_info(&String::from_utf8_lossy(bytes)),
        Value::SimpleString(text) | Value::VerbatimString { text, .. } => check_info(text),
        Value::Array(items) | Value::Set(items) => items.iter().try_for_each(check_version),
        Value::Map(pairs) => pairs.iter().try_for_each(|(_, node)| check_version(node)),
        _ => Ok(()),
    }
}

/// [`check_version`] on one node's `INFO` text.
fn check_info(text: &str) -> Result<(), StoreError> {
    let Some(version) = text
        .lines()
        .find_map(|line| line.trim().strip_prefix("redis_version:"))
    else {
        return Ok(());
    };
    let mut parts = version.split('.').map(|part| part.parse::<u32>());
    match (parts.next(), parts.next()) {
        (Some(Ok(major)), Some(Ok(minor))) if (major, minor) < MIN_VERSION => Err(StoreError::new(
            format!("{}; the server runs Redis {version}", needs_version()),
        )),
        _ => Ok(()),
    }
}

/// What the claim needs, for error messages.
fn needs_version() -> String {
    let (major, minor) = MIN_VERSION;
    format!("the Redis store needs Redis {major}.{minor} or later, for SET with NX and GET")
}

/// A failed claim; a Redis older than 7.0 rejects `SET` with both `NX` and `GET`.
fn claim_error(err: RedisError) -> StoreError {
    if err.to_string().contains("syntax error") {
        error(&format!("Redis claim failed ({})", needs_version()), err)
    } else {
        error("Redis claim failed", err)
    }
}

impl Store for RedisStore {
    fn claim(
        &self,
        key: &str,
        fingerprint: Fingerprint,
        lease: Duration,
    ) -> impl Future<Output = Result<Claim, StoreError>> + Send {
        let record_key = self.record_key(key);
        async move {
            let token = FencingToken::random();
            let record = in_flight_record(&fingerprint, token, lease);
            // Sized up front (seven arguments, all but the key short) rather than grown.
            let mut command = Cmd::with_capacity(7, record_key.len() + record.len() + 32);
            command
                .arg("SET")
                .arg(&record_key)
                .arg(&record[..])
                .arg("NX")
                .arg("GET")
                .arg("PX")
                .arg(millis(lease));
            let reply = match self.query(command).await {
                Ok(reply) => reply,
                Err(err) => {
                    // An error is not a refusal: the claim may be in Redis with nobody
                    // to complete it, and retries would get 409 until its lease lapsed.
                    // Even an error answer may come after an attempt that took effect
                    // and lost its answer, since the Cluster client retries on its own
                    // (through a failover's `TRYAGAIN`, say) and returns the last error
                    // only. Take it back by its token, which is this claim's alone: a
                    // key this claim did not get is left alone. Boxed: laid out in
                    // every claim's future, this rare step made it too large for the
                    // allocator's per-thread cache.
                    let _ = Box::pin(self.release_token(&record_key, token)).await;
                    return Err(claim_error(err));
                }
            };
            // A command the client sent again after it had taken effect (the Cluster
            // client retries on a lost connection) finds this very claim.
            if is_own_claim(&reply, &record) {
                return Ok(Claim::Acquired(token));
            }
            Ok(match read_reply(&record_key, "claim", reply)? {
                None => Claim::Acquired(token),
                Some(record) => Claim::Existing(record),
            })
        }
    }

    fn renew(
        &self,
        key: &str,
        token: FencingToken,
        lease: Duration,
    ) -> impl Future<Output = Result<bool, StoreError>> + Send {
        let record_key = self.record_key(key);
        async move {
            let (token, millis) = (token.0.to_be_bytes(), millis(lease).to_string());
            let fields = lease_fields(lease);
            let args: [&[u8]; 3] = [&token, millis.as_bytes(), &fields];
            self.owner_step("renew", &RENEW, &record_key, &args).await
        }
    }

    fn complete(
        &self,
        key: &str,
        token: FencingToken,
        response: &StoredResponse,
        ttl: Duration,
    ) -> impl Future<Output = Result<bool, StoreError>> + Send {
        let record_key = self.record_key(key);
        let response = response.to_bytes();
        async move {
            let (token, ttl) = (token.0.to_be_bytes(), millis(ttl).to_string());
            let args: [&[u8]; 3] = [&token, &response, ttl.as_bytes()];
            self.owner_step("complete", &COMPLETE, &record_key, &args)
                .await
        }
    }

    fn release(
        &self,
        key: &str,
        token: FencingToken,
    ) -> impl Future<Output = Result<bool, StoreError>> + Send {
        let record_key = self.record_key(key);
        async move { self.release_token(&record_key, token).await }
    }

    fn lookup(&self, key: &str) -> impl Future<Output = Result<Option<Record>, StoreError>> + Send {
        let record_key = self.record_key(key);
        async move {
            let mut command = ::redis::cmd("GET");
            command.arg(&record_key);
            match self.query(command).await {
                Ok(reply) => read_reply(&record_key, "lookup", reply),
                Err(err) => Err(error("Redis lookup failed", err)),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_claim_knows_its_own_record_and_no_other() {
        let fingerprint = Fingerprint::of_bytes(b"x");
        let lease = Duration::from_secs(60);
        let ours = in_flight_record(&fingerprint, FencingToken(7), lease);
        let found = |record: &[u8]| Value::BulkString(record.to_vec());
        assert!(is_own_claim(&found(&ours), &ours));
        let theirs = in_flight_record(&fingerprint, FencingToken(8), lease);
        assert!(!is_own_claim(&found(&theirs), &ours));
        let mut completed = ours.clone();
        completed[0] = COMPLETED;
        assert!(!is_own_claim(&found(&completed), &ours));
        assert!(!is_own_claim(&found(&ours[..40]), &ours));
        assert!(!is_own_claim(&Value::Nil, &ours));
    }

    #[test]
    fn lease_and_ttl_never_reach_zero_or_overflow() {
        assert_eq!(millis(Duration::ZERO), 1);
        assert_eq!(millis(Duration::from_micros(10)), 1);
        assert_eq!(millis(Duration::from_secs(60)), 60_000);
        assert!(millis(Duration::MAX) < i64::MAX as u64 / 2);
    }

    #[test]
    fn records_are_read_back() {
        let fp = Fingerprint::of_bytes(b"x");
        let token = FencingToken(7);
        let now = unix_millis();
        let record = in_flight_record(&fp, token, Duration::from_millis(1500));
        assert_eq!(record.len(), 57);
        assert_eq!(&record[33..41], &7u64.to_be_bytes());
        let Ok(Record::InFlight {
            fingerprint,
            lease_remaining,
        }) = parse_record("k", record.clone(), now)
        else {
            panic!("an in-flight record reads back");
        };
        assert_eq!(fingerprint, fp);
        assert!(
            Duration::from_millis(1400) < lease_remaining
                && lease_remaining <= Duration::from_millis(1500),
            "{lease_remaining:?}"
        );

        let response =
            StoredResponse::new(http::StatusCode::CREATED, Default::default(), "ok".into());
        let mut completed = vec![COMPLETED];
        completed.extend_from_slice(fp.as_bytes());
        completed.extend_from_slice(&response.to_bytes());
        // The body is read in place, at the end of the reply's buffer.
        let body_in_reply = completed[completed.len() - 2..].as_ptr();
        let read = parse_record("k", completed, now).ok();
        let Some(Record::Completed {
            response: read_response,
            ..
        }) = &read
        else {
            panic!("a completed record reads back");
        };
        assert_eq!(read_response.body().as_ptr(), body_in_reply);
        assert_eq!(
            read,
            Some(Record::Completed {
                fingerprint: fp,
                response
            })
        );
    }

    /// Clocks of replicas differ; the lease left is always within (0, lease].
    #[test]
    fn the_lease_left_stays_within_the_lease_whatever_the_clock() {
        let fp = Fingerprint::of_bytes(b"x");
        let record = in_flight_record(&fp, FencingToken(1), Duration::from_secs(60));
        let now = unix_millis();
        for (clock, expected) in [
            (now + 3_600_000, Duration::from_millis(1)),
            (now.saturating_sub(3_600_000), Duration::from_secs(60)),
        ] {
            match parse_record("k", record.clone(), clock) {
                Ok(Record::InFlight {
                    lease_remaining, ..
                }) => assert_eq!(lease_remaining, expected),
                other => panic!("{other:?}"),
            }
        }
    }

    #[test]
    fn corrupt_records_are_errors_not_panics() {
        let fp = Fingerprint::of_bytes(b"x");
        let in_flight = in_flight_record(&fp, FencingToken(1), Duration::from_secs(1));
        let with = |state: u8, tail: &[u8]| {
            let mut record = vec![state];
            record.extend_from_slice(fp.as_bytes());
            record.extend_from_slice(tail);
            record
        };
        let cases = [
            vec![],
            b"I".to_vec(),
            in_flight[..40].to_vec(),
            in_flight[..56].to_vec(),
            [&in_flight[..], b"x"].concat(),
            with(COMPLETED, b""),
            with(COMPLETED, b"garbage"),
            with(b'P', b""),
        ];
        for case in cases {
            let err = parse_record("idempotent:{k}", case.clone(), unix_millis())
                .err()
                .unwrap_or_else(|| panic!("{case:?} must be rejected"));
            assert!(
                err.to_string()
                    .contains("corrupt idempotency record at Redis key `idempotent:{k}`"),
                "{err}"
            );
        }
        assert!(read_reply("k", "claim", Value::Int(1)).is_err());
        assert!(read_reply("k", "claim", Value::Nil).is_ok_and(|r| r.is_none()));
    }

    fn info(version: &str) -> Value {
        let text = format!("# Server\r\nredis_version:{version}\r\nredis_mode:standalone\r\n");
        Value::BulkString(text.into_bytes())
    }

    /// `connect` fails on a Redis too old for the claim, naming its version.
    #[test]
    fn an_old_server_is_refused_up_front() {
        for old in ["6.2.14", "5.0.7", "6.0.0"] {
            let message = check_version(&info(old)).unwrap_err().to_string();
            assert!(message.contains("needs Redis 7.0 or later"), "{message}");
            assert!(message.contains(old), "{message}");
        }
        for new in ["7.0.0", "7.0.15", "7.2.4", "8.0.2", "10.1.0"] {
            assert!(check_version(&info(new)).is_ok(), "{new}");
        }
        // Valkey reports the Redis version it is compatible with.
        let valkey = "redis_version:7.2.4\r\nserver_name:valkey\r\nvalkey_version:8.1.0\r\n";
        assert!(check_version(&Value::BulkString(valkey.into())).is_ok());
        // RESP3 servers answer with a verbatim string.
        let verbatim = Value::VerbatimString {
            format: ::redis::VerbatimFormat::Text,
            text: "redis_version:6.2.6\r\n".to_owned(),
        };
        assert!(check_version(&verbatim).is_err());
        // A Cluster answers per node: one old node is enough to refuse.
        let node = |v: &str| {
            (
                Value::SimpleString(format!("10.0.0.{}:6379", v.len())),
                info(v),
            )
        };
        let mixed = Value::Map(vec![node("7.0.15"), node("6.2.14")]);
        assert!(check_version(&mixed).is_err());
        assert!(check_version(&Value::Map(vec![node("7.0.15"), node("7.2.4")])).is_ok());
        // Nothing readable: not checked, the claim's error will tell.
        for unreadable in [
            Value::Nil,
            Value::Okay,
            Value::BulkString(b"redis_mode:standalone".to_vec()),
            info("unstable"),
        ] {
            assert!(check_version(&unreadable).is_ok(), "{unreadable:?}");
        }
    }

    /// Redis before 7.0 answers `SET ... NX GET` with a syntax error; the claim's error
    /// names the version needed rather than leaving the user to guess.
    #[test]
    fn a_server_older_than_7_is_named_in_the_claim_error() {
        use ::redis::{ErrorKind, ServerErrorKind};
        let kind = ErrorKind::Server(ServerErrorKind::ResponseError);
        let old = RedisError::from((kind, "server error", "syntax error".to_owned()));
        let message = claim_error(old).to_string();
        assert!(message.contains("needs Redis 7.0 or later"), "{message}");
        assert!(message.contains("syntax error"), "{message}");

        let other = RedisError::from((kind, "server error", "OOM".to_owned()));
        let message = claim_error(other).to_string();
        assert!(!message.contains("7.0"), "{message}");
    }
}
