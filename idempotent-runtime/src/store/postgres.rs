#![doc = include_str!("../../docs/postgres.md")]

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use sqlx::postgres::types::PgInterval;
use sqlx::postgres::{PgConnection, PgPool, PgRow};
use sqlx::{AssertSqlSafe, Row};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use super::{Claim, FencingToken, LONGEST, Record, Store, StoreError};
use crate::protocol::short;
use crate::{Fingerprint, StoredResponse};

const TARGET: &str = "idempotent";

/// Key of the transaction-level advisory lock that serialises [`PostgresStore::migrate`]
/// across replicas (the bytes of `"idemmigr"`).
const MIGRATION_LOCK: i64 = 0x6964_656d_6d69_6772;

/// How often a claim is tried again when a concurrent claimant changed the row between the
/// statement's snapshot and its insert (see "Claim" in the module docs).
const CLAIM_ATTEMPTS: usize = 16;

/// How often a purge statement is tried when claims took over rows it had chosen (see
/// [`PostgresStore::purge_expired`]).
const PURGE_ATTEMPTS: usize = 16;

/// The longest schema or table name accepted, so that the derived name
/// (`<table>_expires_at_idx`) fits Postgres' 63-byte limit.
pub const MAX_IDENTIFIER_LEN: usize = 48;

/// The Postgres store: records in one table of the database your app already uses.
///
/// Cloning is cheap and shares the pool. See the [module docs](self) for the table, the
/// SQL and how time, fencing and cleanup work.
///
/// ```no_run
/// use idempotent_runtime::{Idempotency, PostgresStore};
///
/// # async fn run() -> Result<(), Box<dyn std::error::Error>> {
/// let pool = sqlx::PgPool::connect("postgres://postgres@127.0.0.1:5432/test").await?;
/// let store = PostgresStore::new(pool)
///     .with_schema("billing")?
///     .with_table("http_idempotency")?;
/// store.migrate().await?;
/// let idempotency = Idempotency::new(store);
/// # let _ = idempotency;
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct PostgresStore {
    pool: PgPool,
    names: Arc<Names>,
    sql: Arc<Sql>,
}

impl fmt::Debug for PostgresStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PostgresStore")
            .field("schema", &self.names.schema)
            .field("table", &self.names.table)
            .finish_non_exhaustive()
    }
}

#[derive(Debug)]
struct Names {
    schema: String,
    table: String,
}

impl Names {
    /// `"schema"."table"`, also the argument of `to_regclass`.
    fn qualified_table(&self) -> String {
        format!("\"{}\".\"{}\"", self.schema, self.table)
    }
}

/// Every statement the store runs, built once per schema and table.
#[derive(Debug)]
struct Sql {
    create_schema: Arc<str>,
    create: Vec<Arc<str>>,
    claim: Arc<str>,
    renew: Arc<str>,
    complete: Arc<str>,
    release: Arc<str>,
    lookup: Arc<str>,
    purge: Arc<str>,
}

const CREATE_SCHEMA: &str = r#"CREATE SCHEMA IF NOT EXISTS "{schema}""#;

const CREATE: [&str; 2] = [
    r#"CREATE TABLE IF NOT EXISTS "{schema}"."{table}" (
    key         text        PRIMARY KEY,
    token       bigint      NOT NULL,
    fingerprint bytea       NOT NULL,
    state       text        NOT NULL CHECK (state IN ('in_flight', 'completed')),
    expires_at  timestamptz NOT NULL,
    response    bytea
)"#,
    r#"CREATE INDEX IF NOT EXISTS "{table}_expires_at_idx" ON "{schema}"."{table}" (expires_at)"#,
];

const CLAIM: &str = r#"WITH live AS (
    SELECT r.token, r.state, r.fingerprint, r.expires_at, r.response
    FROM "{schema}"."{table}" AS r
    WHERE r.key = $1 AND r.expires_at > clock_timestamp()
), claimed AS (
    INSERT INTO "{schema}"."{table}" AS r (key, token, fingerprint, state, expires_at)
    SELECT $1, $4, $2, 'in_flight', clock_timestamp() + $3
    WHERE NOT EXISTS (SELECT 1 FROM live)
    ON CONFLICT (key) DO UPDATE
        SET token = EXCLUDED.token,
            fingerprint = EXCLUDED.fingerprint,
            state = 'in_flight',
            expires_at = EXCLUDED.expires_at,
            response = NULL
        WHERE r.expires_at <= clock_timestamp()
    RETURNING r.token
)
SELECT true AS acquired, token, NULL::text AS state, NULL::bytea AS fingerprint,
       NULL::bigint AS remaining_us, NULL::bytea AS response
FROM claimed
UNION ALL
SELECT false, token, state, fingerprint,
       (extract(epoch FROM expires_at - clock_timestamp()) * 1000000)::bigint,
       response
FROM live"#;

const RENEW: &str = r#"UPDATE "{schema}"."{table}"
SET expires_at = clock_timestamp() + $3
WHERE key = $1 AND token = $2 AND state = 'in_flight'"#;

const COMPLETE: &str = r#"UPDATE "{schema}"."{table}"
SET state = 'completed', response = $3, expires_at = clock_timestamp() + $4
WHERE key = $1 AND token = $2 AND state = 'in_flight'"#;

const RELEASE: &str = r#"DELETE FROM "{schema}"."{table}"
WHERE key = $1 AND token = $2 AND state = 'in_flight'"#;

const LOOKUP: &str = r#"SELECT state, fingerprint,
       (extract(epoch FROM expires_at - clock_timestamp()) * 1000000)::bigint AS remaining_us,
       response
FROM "{schema}"."{table}"
WHERE key = $1 AND expires_at > clock_timestamp()"#;

const PURGE: &str = r#"DELETE FROM "{schema}"."{table}"
WHERE key = ANY(ARRAY(
        SELECT key FROM "{schema}"."{table}"
        WHERE expires_at <= statement_timestamp()
        ORDER BY expires_at
        LIMIT $1
        FOR UPDATE SKIP LOCKED))
  AND expires_at <= clock_timestamp()"#;

impl Sql {
    fn new(names: &Names) -> Self {
        // The names are validated (letters, digits, `_`), so they can neither end the
        // quoted identifier nor the string literal they appear in.
        let fill = |template: &str| -> Arc<str> {
            template
                .replace("{schema}", &names.schema)
                .replace("{table}", &names.table)
                .into()
        };
        Self {
            create_schema: fill(CREATE_SCHEMA),
            create: CREATE.iter().map(|t| fill(t)).collect(),
            claim: fill(CLAIM),
            renew: fill(RENEW),
            complete: fill(COMPLETE),
            release: fill(RELEASE),
            lookup: fill(LOOKUP),
            purge: fill(PURGE),
        }
    }
}

/// A statement on a validated, store-built SQL string.
fn query<'q>(sql: &Arc<str>) -> PgQuery<'q> {
    sqlx::query(AssertSqlSafe(Arc::clone(sql)))
}

fn validate(kind: &str, name: &str) -> Result<(), StoreError> {
    let mut chars = name.chars();
    let starts_well = chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_');
    let rest_ok = chars.all(|c| c.is_ascii_alphanumeric() || c == '_');
    if starts_well && rest_ok && name.len() <= MAX_IDENTIFIER_LEN {
        Ok(())
    } else {
        Err(StoreError::new(format!(
            "invalid postgres {kind} name `{name}`: use 1 to {MAX_IDENTIFIER_LEN} ASCII letters, digits or `_`, not starting with a digit"
        )))
    }
}

fn interval(duration: Duration) -> PgInterval {
    let duration = duration.min(LONGEST);
    let micros = duration.as_micros();
    // Round up, so that a lease of 1.5 µs is not 1 µs.
    let micros = if Duration::from_micros(micros as u64) < duration {
        micros + 1
    } else {
        micros
    };
    PgInterval {
        months: 0,
        days: 0,
        microseconds: i64::try_from(micros).unwrap_or(i64::MAX),
    }
}

fn db_error(what: &str, err: sqlx::Error) -> StoreError {
    StoreError::from_source(format!("postgres store: {what} failed"), err)
}

fn corrupt(key: &str, detail: impl fmt::Display) -> StoreError {
    let short = key.get(..16).unwrap_or(key);
    StoreError::new(format!(
        "postgres store: corrupt record under key {short}…: {detail}"
    ))
}

/// The SQLSTATE of a serialization failure: a claim or a purge under `REPEATABLE READ`
/// or `SERIALIZABLE` that met a concurrent claimant. Trying again is the documented
/// answer.
fn is_serialization_failure(err: &sqlx::Error) -> bool {
    err.as_database_error()
        .and_then(|e| e.code())
        .is_some_and(|code| code == "40001")
}

/// Reads `state`, `fingerprint`, `remaining_us` and `response` of a live row.
fn record(key: &str, row: &PgRow) -> Result<Record, StoreError> {
    let get_err = |e: sqlx::Error| corrupt(key, e);
    let state: Option<String> = row.try_get("state").map_err(get_err)?;
    let fingerprint: Option<Vec<u8>> = row.try_get("fingerprint").map_err(get_err)?;
    let fingerprint = fingerprint
        .and_then(|bytes| <[u8; 32]>::try_from(bytes).ok())
        .map(Fingerprint::from_bytes)
        .ok_or_else(|| corrupt(key, "the fingerprint is not 32 bytes"))?;
    match state.as_deref() {
        Some("in_flight") => {
            let remaining: Option<i64> = row.try_get("remaining_us").map_err(get_err)?;
            let micros = remaining.and_then(|us| u64::try_from(us).ok()).unwrap_or(0);
            Ok(Record::InFlight {
                fingerprint,
                lease_remaining: Duration::from_micros(micros),
            })
        }
        Some("completed") => {
            let bytes: Option<Vec<u8>> = row.try_get("response").map_err(get_err)?;
            let bytes = bytes.ok_or_else(|| corrupt(key, "a completed record has no response"))?;
            // The body stays in the `Vec` the column was decoded into: no second copy.
            let response =
                StoredResponse::from_shared(bytes.into()).map_err(|e| corrupt(key, e))?;
            Ok(Record::Completed {
                fingerprint,
                response,
            })
        }
        Some(other) => Err(corrupt(key, format_args!("unknown state `{other}`"))),
        None => Err(corrupt(key, "no state")),
    }
}

impl PostgresStore {
    /// The schema used unless [`with_schema`](Self::with_schema) says otherwise.
    pub const DEFAULT_SCHEMA: &'static str = "public";
    /// The table used unless [`with_table`](Self::with_table) says otherwise.
    pub const DEFAULT_TABLE: &'static str = "idempotency_records";

    /// A store over your pool, in `public.idempotency_records`.
    ///
    /// Nothing is sent to the database until the first operation; call
    /// [`migrate`](Self::migrate) once at startup to create the table.
    pub fn new(pool: PgPool) -> Self {
        Self::with_names(
            pool,
            Self::DEFAULT_SCHEMA.into(),
            Self::DEFAULT_TABLE.into(),
        )
    }

    fn with_names(pool: PgPool, schema: String, table: String) -> Self {
        let names = Names { schema, table };
        let sql = Arc::new(Sql::new(&names));
        Self {
            pool,
            names: Arc::new(names),
            sql,
        }
    }

    /// Keeps the records in `schema` (created by [`migrate`](Self::migrate) if missing).
    ///
    /// The name is used exactly as written, quoted: 1 to [`MAX_IDENTIFIER_LEN`] ASCII
    /// letters, digits or `_`, not starting with a digit nor, for a schema, with `pg_`
    /// (Postgres keeps those for itself). Anything else is an error, here rather than
    /// at [`migrate`](Self::migrate). Being quoted, a name with capitals keeps them: SQL
    /// of your own must quote it too.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() {
    /// use idempotent_runtime::PostgresStore;
    ///
    /// let pool = sqlx::PgPool::connect_lazy("postgres://localhost/app").unwrap();
    /// let store = PostgresStore::new(pool);
    /// assert_eq!(store.clone().with_schema("billing").unwrap().schema(), "billing");
    /// assert!(store.clone().with_schema("billing; drop table users").is_err());
    /// assert!(store.with_schema("pg_billing").is_err());
    /// # }
    /// ```
    pub fn with_schema(self, schema: &str) -> Result<Self, StoreError> {
        validate("schema", schema)?;
        if schema.starts_with("pg_") {
            return Err(StoreError::new(format!(
                "invalid postgres schema name `{schema}`: names starting with `pg_` are reserved for Postgres' own schemas"
            )));
        }
        Ok(Self::with_names(
            self.pool,
            schema.to_owned(),
            self.names.table.clone(),
        ))
    }

    /// Keeps the records in `table`, with the same rules for the name as
    /// [`with_schema`](Self::with_schema).
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() {
    /// use idempotent_runtime::PostgresStore;
    ///
    /// let pool = sqlx::PgPool::connect_lazy("postgres://localhost/app").unwrap();
    /// let store = PostgresStore::new(pool).with_table("http_idempotency").unwrap();
    /// assert_eq!(store.table(), "http_idempotency");
    /// assert_eq!(store.schema(), "public");
    /// # }
    /// ```
    pub fn with_table(self, table: &str) -> Result<Self, StoreError> {
        validate("table", table)?;
        Ok(Self::with_names(
            self.pool,
            self.names.schema.clone(),
            table.to_owned(),
        ))
    }

    /// The schema of the table.
    pub fn schema(&self) -> &str {
        &self.names.schema
    }

    /// The table's name.
    pub fn table(&self) -> &str {
        &self.names.table
    }

    /// The pool the store runs on.
    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    /// Creates the schema, table and index if they are missing.
    ///
    /// Safe to call from every replica at every start, at the same time: the steps run in
    /// one transaction under a transaction-level advisory lock, so concurrent callers
    /// wait for each other instead of racing on `CREATE`. When the table exists already,
    /// nothing is created and no privilege beyond reading the catalog is needed. The SQL
    /// is in the [module docs](self#the-table).
    pub async fn migrate(&self) -> Result<(), StoreError> {
        let failed = |e| db_error("migrate", e);
        let mut tx = self.pool.begin().await.map_err(failed)?;
        sqlx::query("SELECT pg_advisory_xact_lock($1)")
            .bind(MIGRATION_LOCK)
            .execute(&mut *tx)
            .await
            .map_err(failed)?;
        let exists: bool = sqlx::query("SELECT to_regclass($1) IS NOT NULL")
            .bind(self.names.qualified_table())
            .fetch_one(&mut *tx)
            .await
            .and_then(|row| row.try_get(0))
            .map_err(failed)?;
        if exists {
            return tx.commit().await.map_err(failed);
        }
        let schema_exists: bool =
            sqlx::query("SELECT EXISTS (SELECT 1 FROM pg_namespace WHERE nspname = $1)")
                .bind(&self.names.schema)
                .fetch_one(&mut *tx)
                .await
                .and_then(|row| row.try_get(0))
                .map_err(failed)?;
        if !schema_exists {
            query(&self.sql.create_schema)
                .persistent(false)
                .execute(&mut *tx)
                .await
                .map_err(failed)?;
        }
        for statement in &self.sql.create {
            query(statement)
                .persistent(false)
                .execute(&mut *tx)
                .await
                .map_err(failed)?;
        }
        tx.commit().await.map_err(failed)?;
        tracing::info!(target: TARGET, schema = %self.names.schema, table = %self.names.table, "created the idempotency table");
        Ok(())
    }

    /// Deletes every expired record (completed past its TTL, or in flight past its
    /// lease), `batch_size` rows per statement; returns how many went.
    ///
    /// Each batch is its own short statement that skips rows other sessions hold locked,
    /// so it never waits on a live request and several replicas can purge at once. Under
    /// `REPEATABLE READ` or `SERIALIZABLE`, a statement that meets a row a claim took over
    /// since its snapshot fails with a serialization error; it is tried again, and the
    /// next one leaves that row alone. A `batch_size` of 0 counts as 1.
    ///
    /// ```no_run
    /// # async fn run(store: idempotent_runtime::PostgresStore) -> Result<(), idempotent_runtime::StoreError> {
    /// let removed = store.purge_expired(1000).await?;
    /// println!("removed {removed} expired idempotency records");
    /// # Ok(()) }
    /// ```
    pub async fn purge_expired(&self, batch_size: u32) -> Result<u64, StoreError> {
        let batch = batch_size.max(1);
        let mut total = 0;
        loop {
            let deleted = self.purge_batch(batch).await?;
            total += deleted;
            if deleted < u64::from(batch) {
                return Ok(total);
            }
        }
    }

    /// One purge statement; returns how many rows it deleted.
    async fn purge_batch(&self, batch: u32) -> Result<u64, StoreError> {
        let mut attempt = 1;
        loop {
            let purged = query(&self.sql.purge)
                .bind(i64::from(batch))
                .execute(&self.pool)
                .await;
            match purged {
                Ok(done) => return Ok(done.rows_affected()),
                // Under `REPEATABLE READ` or `SERIALIZABLE`, a row that a claim took over
                // after the statement's snapshot fails it instead of being skipped. The
                // next statement's snapshot shows the takeover, and leaves the row alone.
                Err(err) if is_serialization_failure(&err) && attempt < PURGE_ATTEMPTS => {
                    attempt += 1;
                }
                Err(err) => return Err(db_error("purge", err)),
            }
        }
    }

    /// Runs [`purge_expired`](Self::purge_expired) every `every` (first right away) in a
    /// background task, until the returned handle is dropped or
    /// [stopped](CleanupTask::stop).
    ///
    /// Each run that removes rows logs their count at `INFO` (target `idempotent`);
    /// failures are logged at `WARN` and the task carries on. Fails only when called
    /// outside a Tokio runtime.
    ///
    /// ```no_run
    /// use std::time::Duration;
    ///
    /// # async fn run(store: idempotent_runtime::PostgresStore) -> Result<(), idempotent_runtime::StoreError> {
    /// let cleanup = store.spawn_cleanup(Duration::from_secs(60), 1000)?;
    /// // ... serve requests; keep `cleanup` alive as long as the app runs ...
    /// let removed = cleanup.stop().await;
    /// # let _ = removed;
    /// # Ok(()) }
    /// ```
    pub fn spawn_cleanup(
        &self,
        every: Duration,
        batch_size: u32,
    ) -> Result<CleanupTask, StoreError> {
        let runtime = tokio::runtime::Handle::try_current().map_err(|e| {
            StoreError::from_source("postgres store: the cleanup task needs a Tokio runtime", e)
        })?;
        let (stop, stopped) = oneshot::channel();
        let task = runtime.spawn(cleanup_loop(
            self.clone(),
            every.max(Duration::from_millis(1)),
            batch_size,
            stopped,
        ));
        Ok(CleanupTask { stop, task })
    }

    /// One claim statement: the row for the caller, or `None` when the statement's
    /// snapshot could not show the row that stopped the insert.
    async fn claim_once(
        &self,
        conn: &mut PgConnection,
        key: &str,
        fingerprint: &Fingerprint,
        lease: PgInterval,
        token: i64,
    ) -> Result<Option<PgRow>, sqlx::Error> {
        query(&self.sql.claim)
            .bind(key)
            .bind(fingerprint.as_bytes().as_slice())
            .bind(lease)
            .bind(token)
            .fetch_optional(conn)
            .await
    }

    /// Deletes a claim whose statement failed without an answer, if it was granted.
    async fn take_back(&self, key: &str, token: i64) {
        match Store::release(self, key, FencingToken(token as u64)).await {
            Ok(true) => {
                tracing::warn!(target: TARGET, key = short(key), "a claim whose answer was lost was taken back");
            }
            // Never granted, or not committed yet.
            Ok(false) => {}
            Err(err) => {
                tracing::warn!(target: TARGET, key = short(key), error = %err, "a claim whose answer was lost could not be taken back; if it was granted, its key waits for its lease");
            }
        }
    }

    /// Runs a renew, complete or release statement; `true` if it changed the owner's row.
    async fn guarded(&self, what: &str, statement: PgQuery<'_>) -> Result<bool, StoreError> {
        let done = statement
            .execute(&self.pool)
            .await
            .map_err(|e| db_error(what, e))?;
        Ok(done.rows_affected() == 1)
    }
}

type PgQuery<'q> = sqlx::query::Query<'q, sqlx::Postgres, sqlx::postgres::PgArguments>;

/// A claim's token, drawn by the store rather than the database, so that a claim whose
/// answer was lost can still be taken back by it: a positive `bigint`, unique with
/// overwhelming probability.
fn new_token() -> i64 {
    (FencingToken::random().0 >> 1).max(1) as i64
}

/// Tokens are positive `bigint`s: one outside that range owns nothing.
fn token_param(token: FencingToken) -> Option<i64> {
    i64::try_from(token.0).ok()
}

/// Whether a statement that failed on a connection it had may still have run and
/// committed: the connection failed with no answer, as opposed to an error answer
/// (which, outside a transaction, means nothing was committed).
fn may_have_run(err: &sqlx::Error) -> bool {
    matches!(
        err,
        sqlx::Error::Io(_) | sqlx::Error::Protocol(_) | sqlx::Error::WorkerCrashed
    )
}

fn decode_claim(key: &str, row: &PgRow, token: i64) -> Result<Claim, StoreError> {
    let acquired: bool = row.try_get("acquired").map_err(|e| corrupt(key, e))?;
    if acquired {
        // `new_token` is positive.
        Ok(Claim::Acquired(FencingToken(token as u64)))
    } else {
        record(key, row).map(Claim::Existing)
    }
}

impl Store for PostgresStore {
    async fn claim(
        &self,
        key: &str,
        fingerprint: Fingerprint,
        lease: Duration,
    ) -> Result<Claim, StoreError> {
        let lease = interval(lease);
        let token = new_token();
        // Taken apart from the statement: failing to get a connection sends nothing.
        let mut conn = self
            .pool
            .acquire()
            .await
            .map_err(|e| db_error("claim", e))?;
        for _ in 0..CLAIM_ATTEMPTS {
            match self
                .claim_once(&mut conn, key, &fingerprint, lease, token)
                .await
            {
                Ok(Some(row)) => return decode_claim(key, &row, token),
                // A concurrent claimant committed between this statement's snapshot and
                // its insert: the row exists, but the snapshot cannot show it. The next
                // statement takes a new snapshot and sees it.
                Ok(None) => continue,
                Err(err) if is_serialization_failure(&err) => continue,
                Err(err) => {
                    if may_have_run(&err) {
                        // No answer is not a refusal: the claim may be in the table with
                        // nobody to complete it, and retries would get 409 until its
                        // lease lapsed. Take it back by its token, over another
                        // connection; a key this claim did not get is left alone.
                        drop(conn);
                        self.take_back(key, token).await;
                    }
                    return Err(db_error("claim", err));
                }
            }
        }
        Err(StoreError::new(format!(
            "postgres store: claim did not settle after {CLAIM_ATTEMPTS} attempts under concurrent claims"
        )))
    }

    async fn renew(
        &self,
        key: &str,
        token: FencingToken,
        lease: Duration,
    ) -> Result<bool, StoreError> {
        let Some(token) = token_param(token) else {
            return Ok(false);
        };
        let statement = query(&self.sql.renew)
            .bind(key)
            .bind(token)
            .bind(interval(lease));
        self.guarded("renew", statement).await
    }

    async fn complete(
        &self,
        key: &str,
        token: FencingToken,
        response: &StoredResponse,
        ttl: Duration,
    ) -> Result<bool, StoreError> {
        let Some(token) = token_param(token) else {
            return Ok(false);
        };
        let statement = query(&self.sql.complete)
            .bind(key)
            .bind(token)
            .bind(response.to_bytes())
            .bind(interval(ttl));
        self.guarded("complete", statement).await
    }

    async fn release(&self, key: &str, token: FencingToken) -> Result<bool, StoreError> {
        let Some(token) = token_param(token) else {
            return Ok(false);
        };
        let statement = query(&self.sql.release).bind(key).bind(token);
        self.guarded("release", statement).await
    }

    async fn lookup(&self, key: &str) -> Result<Option<Record>, StoreError> {
        let row = query(&self.sql.lookup)
            .bind(key)
            .fetch_optional(&self.pool)
            .await
            .map_err(|e| db_error("lookup", e))?;
        row.map(|row| record(key, &row)).transpose()
    }
}

/// The background cleanup started by [`PostgresStore::spawn_cleanup`].
///
/// Dropping it stops the task: a statement under way gets up to [`STOP_GRACE`] to finish
/// and is then given up. [`stop`](Self::stop) does the same and waits for the task to
/// end.
#[must_use = "the cleanup task stops when this handle is dropped"]
#[derive(Debug)]
pub struct CleanupTask {
    stop: oneshot::Sender<()>,
    task: JoinHandle<u64>,
}

impl CleanupTask {
    /// Stops the task and returns how many rows it removed in all. A statement in
    /// progress gets [`STOP_GRACE`] to report its rows; past that it is given up (its
    /// rows, if it still commits, are not counted), so that a database that stopped
    /// answering cannot hold up a shutdown.
    pub async fn stop(self) -> u64 {
        let Self { stop, task } = self;
        drop(stop);
        task.await.unwrap_or_else(|err| {
            tracing::error!(target: TARGET, error = %err, "the idempotency cleanup task failed");
            0
        })
    }
}

/// How long [`CleanupTask::stop`] waits for a statement in progress to report.
pub const STOP_GRACE: Duration = Duration::from_secs(1);

async fn cleanup_loop(
    store: PostgresStore,
    every: Duration,
    batch_size: u32,
    mut stopped: oneshot::Receiver<()>,
) -> u64 {
    let table = &store.names.table;
    let batch = batch_size.max(1);
    let mut ticks = tokio::time::interval(every);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut total = 0u64;
    'running: loop {
        tokio::select! {
            biased;
            _ = &mut stopped => break,
            _ = ticks.tick() => {}
        }
        // `purge_expired`, one batch at a time, so that every batch is counted; a stop
        // request gives the statement in progress a moment to report (it may have
        // committed already) and then ends it: the database may no longer answer.
        let mut removed = 0u64;
        loop {
            let mut purge = std::pin::pin!(store.purge_batch(batch));
            let purged = tokio::select! {
                biased;
                _ = &mut stopped => {
                    if let Ok(Ok(deleted)) = tokio::time::timeout(STOP_GRACE, purge).await {
                        total += deleted;
                    }
                    break 'running;
                }
                purged = &mut purge => purged,
            };
            match purged {
                Ok(deleted) => {
                    removed += deleted;
                    total += deleted;
                    if deleted < u64::from(batch) {
                        break;
                    }
                }
                Err(err) => {
                    tracing::warn!(target: TARGET, table = %table, error = %err, "purging expired idempotency records failed; will retry");
                    break;
                }
            }
        }
        if removed > 0 {
            tracing::info!(target: TARGET, table = %table, removed, total, "purged expired idempotency records");
        } else {
            tracing::debug!(target: TARGET, table = %table, "no expired idempotency records");
        }
    }
    tracing::debug!(target: TARGET, table = %table, total, "idempotency cleanup stopped");
    total
}

#[cfg(test)]
mod tests {
    use super::*;

    fn squash(sql: &str) -> String {
        sql.split_whitespace().collect::<Vec<_>>().join(" ")
    }

    #[test]
    fn the_module_docs_show_the_sql_that_runs() {
        let docs = squash(include_str!("../../docs/postgres.md"));
        let names = Names {
            schema: PostgresStore::DEFAULT_SCHEMA.into(),
            table: PostgresStore::DEFAULT_TABLE.into(),
        };
        let sql = Sql::new(&names);
        let mut statements = vec![
            &sql.create_schema,
            &sql.claim,
            &sql.renew,
            &sql.complete,
            &sql.release,
            &sql.lookup,
            &sql.purge,
        ];
        statements.extend(&sql.create);
        for statement in statements {
            assert!(
                docs.contains(&squash(statement)),
                "the module docs lack:\n{statement}"
            );
        }
    }

    /// The cleanup must not read the live rows: with a day's TTL they are nearly all of
    /// the table. Postgres can only bound an index scan by a value fixed for the statement.
    #[tokio::test]
    async fn the_purge_reads_expired_rows_through_the_index_only() {
        let url = std::env::var("DATABASE_URL")
            .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into());
        let pool = sqlx::postgres::PgPoolOptions::new()
            .max_connections(1)
            .connect(&url)
            .await
            .expect("cannot connect to Postgres at DATABASE_URL (scripts/services.sh starts it)");
        let schema = format!("purge_plan_{}", std::process::id());
        let store = PostgresStore::new(pool.clone())
            .with_schema(&schema)
            .expect("a valid schema name");
        store.migrate().await.expect("migrate");
        // Whatever the table's size, an index scan is what is asked about.
        sqlx::query("SET enable_seqscan = off")
            .execute(&pool)
            .await
            .expect("set");
        let explain = format!("EXPLAIN {}", store.sql.purge);
        let plan: Vec<String> = sqlx::query_scalar(AssertSqlSafe(explain))
            .bind(1000_i64)
            .fetch_all(&pool)
            .await
            .expect("explain");
        sqlx::query(AssertSqlSafe(format!(r#"DROP SCHEMA "{schema}" CASCADE"#)))
            .execute(&pool)
            .await
            .expect("drop");
        let plan = plan.join("\n");
        assert!(
            plan.contains("Index Cond: (expires_at <= statement_timestamp())"),
            "the candidates are not bounded by the index:\n{plan}"
        );
    }

    #[test]
    fn identifiers_are_letters_digits_and_underscores() {
        for good in ["public", "_x", "Idem_2", &"a".repeat(MAX_IDENTIFIER_LEN)] {
            assert!(validate("table", good).is_ok(), "{good}");
        }
        for bad in [
            "",
            "1abc",
            "a-b",
            "a\"b",
            "a'b",
            "a b",
            "é",
            &"a".repeat(MAX_IDENTIFIER_LEN + 1),
        ] {
            assert!(validate("table", bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn intervals_round_up_and_stay_in_range() {
        assert_eq!(interval(Duration::from_nanos(1500)).microseconds, 2);
        assert_eq!(interval(Duration::from_millis(300)).microseconds, 300_000);
        assert_eq!(
            interval(Duration::MAX).microseconds,
            LONGEST.as_micros() as i64
        );
    }
}
