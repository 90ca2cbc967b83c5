//! The idempotency store named by a URL: the one place where the examples choose
//! between the memory, Redis and Postgres stores.
//!
//! - `memory`: the embedded [`MemoryStore`], one process;
//! - `redis://...` (or `rediss://...`, or `redis+unix:///PATH` for a Unix socket): the
//!   Redis store, cargo feature `redis`;
//! - `postgres://...` (or `postgresql://...`): the Postgres store, cargo feature `postgres`.
//!
//! A URL the build cannot serve is an error that names the feature to enable: falling
//! back to the memory store would silently lose the guarantee across replicas.

use std::fmt;

use idempotent_runtime::store::TieredStore;
use idempotent_runtime::{Idempotency, MemoryStore, Store};

/// Whether replays are served from copies in this process's memory, in front of the
/// store (a [`TieredStore`] whose fast tier is a [`MemoryStore`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
// Only `bench_server` keeps copies; `orders` and its tests include this file too.
#[allow(dead_code)]
pub enum LocalCopies {
    /// No copies: every request asks the store.
    Off,
    /// Copies of the responses this process completes or replays.
    OfCompletions,
    /// Copies of the responses this process replays only: a first execution makes no
    /// copy, and costs the store's claim and completion and a lookup in memory.
    OfReplays,
}

/// A store this build can open.
#[derive(Clone, PartialEq, Eq)]
pub enum StoreUrl {
    Memory,
    #[cfg(feature = "redis")]
    Redis(String),
    #[cfg(feature = "postgres")]
    Postgres(String),
}

impl StoreUrl {
    /// Reads `url`; an unknown scheme, or one whose store this build lacks, is an error.
    pub fn parse(url: &str) -> Result<Self, String> {
        let scheme = url.split_once("://").map_or(url, |(scheme, _)| scheme);
        match scheme {
            "memory" => Ok(Self::Memory),
            #[cfg(feature = "redis")]
            "redis" | "rediss" | "redis+unix" => Ok(Self::Redis(url.to_owned())),
            #[cfg(not(feature = "redis"))]
            "redis" | "rediss" | "redis+unix" => Err(not_built(url, "Redis", "redis")),
            #[cfg(feature = "postgres")]
            "postgres" | "postgresql" => Ok(Self::Postgres(url.to_owned())),
            #[cfg(not(feature = "postgres"))]
            "postgres" | "postgresql" => Err(not_built(url, "Postgres", "postgres")),
            _ => Err(format!(
                "unknown store `{}`: expected `memory`, `redis://HOST:PORT` or `postgres://USER@HOST:PORT/DB`",
                redact(url)
            )),
        }
    }

    /// Connects to the store and wraps it in an [`Idempotency`] with the default
    /// settings. Postgres records live in `schema` (created on demand), and a cleanup
    /// task removes the expired ones while the returned [`Opened`] lives; Redis records
    /// go under the key prefix `schema`, so that a program's keys can be told apart.
    ///
    /// With `local_copies` other than [`LocalCopies::Off`], the store is the durable
    /// tier of a [`TieredStore`] whose fast tier is a [`MemoryStore`] in this process:
    /// replays of the responses it holds copies of are served without a round trip.
    pub async fn open(&self, schema: &str, local_copies: LocalCopies) -> Result<Opened, String> {
        // Unused in a build without the `redis` and `postgres` features.
        let _ = schema;
        fn idempotency(store: impl Store, local_copies: LocalCopies) -> Idempotency {
            // Uncapped: the copies of ten minutes of keys. A service would cap it with
            // `with_max_entries(..).evicting()` (see `TieredStore`).
            let tiered = |store| TieredStore::new(store, MemoryStore::new());
            match local_copies {
                LocalCopies::Off => Idempotency::new(store),
                LocalCopies::OfCompletions => Idempotency::new(tiered(store)),
                LocalCopies::OfReplays => {
                    Idempotency::new(tiered(store).with_copy_on_completion(false))
                }
            }
        }
        match self {
            Self::Memory => Ok(Opened::new(idempotency(MemoryStore::new(), local_copies))),
            #[cfg(feature = "redis")]
            Self::Redis(url) => {
                let store = idempotent_runtime::RedisStore::connect(url.as_str())
                    .await
                    .map_err(|err| format!("cannot connect to Redis at {self}: {err}"))?
                    .with_prefix(schema);
                Ok(Opened::new(idempotency(store, local_copies)))
            }
            #[cfg(feature = "postgres")]
            Self::Postgres(url) => {
                use idempotent_runtime::PostgresStore;
                use idempotent_runtime::sqlx::postgres::PgPoolOptions;

                let pool = PgPoolOptions::new()
                    // Past this a request gets 503 instead of waiting for a connection.
                    .acquire_timeout(std::time::Duration::from_secs(2))
                    // No ping before each statement: sqlx pings a connection when it
                    // comes back to the pool already (see the `store::postgres` docs).
                    .test_before_acquire(false)
                    .connect(url)
                    .await
                    .map_err(|err| format!("cannot connect to Postgres at {self}: {err}"))?;
                let store = PostgresStore::new(pool)
                    .with_schema(schema)
                    .map_err(|err| format!("invalid schema `{schema}`: {err}"))?;
                store
                    .migrate()
                    .await
                    .map_err(|err| format!("cannot create the tables in {self}: {err}"))?;
                let cleanup = store
                    .spawn_cleanup(std::time::Duration::from_secs(60), 1000)
                    .map_err(|err| err.to_string())?;
                let mut opened = Opened::new(idempotency(store, local_copies));
                opened.cleanup = Some(cleanup);
                Ok(opened)
            }
        }
    }
}

/// An open store, and what must live as long as it.
pub struct Opened {
    pub idempotency: Idempotency,
    #[cfg(feature = "postgres")]
    cleanup: Option<idempotent_runtime::store::postgres::CleanupTask>,
}

impl Opened {
    fn new(idempotency: Idempotency) -> Self {
        Self {
            idempotency,
            #[cfg(feature = "postgres")]
            cleanup: None,
        }
    }
}

/// The URL with its password hidden, for messages and logs.
impl fmt::Display for StoreUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Memory => f.write_str("memory"),
            #[cfg(feature = "redis")]
            Self::Redis(url) => f.write_str(&redact(url)),
            #[cfg(feature = "postgres")]
            Self::Postgres(url) => f.write_str(&redact(url)),
        }
    }
}

impl fmt::Debug for StoreUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "StoreUrl({self})")
    }
}

#[cfg(not(all(feature = "redis", feature = "postgres")))]
fn not_built(url: &str, store: &str, feature: &str) -> String {
    format!(
        "cannot use `{}`: this build has no {store} store; run with `--features {feature}`",
        redact(url)
    )
}

fn redact(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    let (authority, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
    match authority.rsplit_once('@') {
        Some((userinfo, host)) if userinfo.contains(':') => {
            let user = userinfo.split(':').next().unwrap_or_default();
            format!("{scheme}://{user}:***@{host}{path}")
        }
        _ => url.to_owned(),
    }
}
