//! The real Postgres server in tests: a fresh schema per test, stores with pools of their
//! own (one per app replica), and a TCP forwarder on loopback that a test can cut and
//! bring back to take the database away, or that counts the messages a client sends.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::str::FromStr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use idempotent_runtime::{FencingToken, PostgresStore};
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{Connection, PgConnection, PgPool};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpSocket, TcpStream};
use tokio::sync::{Mutex, oneshot, watch};
use tokio::task::{JoinHandle, JoinSet};

pub fn database_url() -> String {
    std::env::var("DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".to_owned())
}

pub fn connect_options() -> PgConnectOptions {
    PgConnectOptions::from_str(&database_url()).expect("DATABASE_URL is a postgres URL")
}

/// A pool of up to 20 connections to DATABASE_URL.
pub async fn pool() -> PgPool {
    pool_of(20).await
}

/// A pool of up to `max_connections` connections to DATABASE_URL.
pub async fn pool_of(max_connections: u32) -> PgPool {
    PgPoolOptions::new()
        .max_connections(max_connections)
        .acquire_timeout(Duration::from_secs(10))
        .connect_with(connect_options())
        .await
        .expect("cannot connect to Postgres at DATABASE_URL (scripts/services.sh starts it)")
}

/// A schema no other test run uses, dropped with everything in it when this guard goes,
/// also when the test fails.
pub struct TestSchema(String);

impl TestSchema {
    pub fn new() -> Self {
        Self(format!("idem_test_{:016x}", FencingToken::random().0))
    }

    pub fn name(&self) -> &str {
        &self.0
    }
}

impl Drop for TestSchema {
    fn drop(&mut self) {
        // Drop runs outside async code (and maybe while unwinding), so the schema is
        // dropped over a connection of its own on a thread of its own.
        let sql = format!(r#"DROP SCHEMA IF EXISTS "{}" CASCADE"#, self.0);
        let dropped = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(|e| e.to_string())?;
            runtime.block_on(async {
                let mut conn = PgConnection::connect_with(&connect_options())
                    .await
                    .map_err(|e| e.to_string())?;
                sqlx::query(sqlx::AssertSqlSafe(sql))
                    .execute(&mut conn)
                    .await
                    .map_err(|e| e.to_string())?;
                conn.close().await.map_err(|e| e.to_string())
            })
        })
        .join();
        if let Ok(Err(err)) = dropped {
            eprintln!("could not drop test schema {}: {err}", self.0);
        }
    }
}

/// A migrated store in a schema of its own; keep the guard for as long as the test runs.
pub async fn fresh_store() -> (PostgresStore, TestSchema) {
    let schema = TestSchema::new();
    let store = PostgresStore::new(pool().await)
        .with_schema(schema.name())
        .expect("a valid schema name");
    store.migrate().await.expect("migrate");
    (store, schema)
}

/// A store in `schema` (already migrated) over a small pool of its own, as each replica
/// of an app has: several of them in one test stay well below the server's connection
/// limit.
pub async fn store_in(schema: &str) -> PostgresStore {
    PostgresStore::new(pool_of(5).await)
        .with_schema(schema)
        .expect("a valid schema name")
}

/// Rows in the store's table, expired or not.
pub async fn row_count(store: &PostgresStore) -> i64 {
    let sql = format!(
        r#"SELECT count(*) FROM "{}"."{}""#,
        store.schema(),
        store.table()
    );
    sqlx::query_scalar(sqlx::AssertSqlSafe(sql))
        .fetch_one(store.pool())
        .await
        .expect("count rows")
}

/// Another session's transaction, holding the rows of `keys` locked as a claim taking
/// one over would; commit it to let them go.
pub async fn lock_rows(
    store: &PostgresStore,
    keys: &[&str],
) -> sqlx::Transaction<'static, sqlx::Postgres> {
    let mut other = store.pool().begin().await.expect("begin");
    let sql = format!(
        r#"SELECT 1 FROM "{}"."{}" WHERE key = ANY($1) FOR UPDATE"#,
        store.schema(),
        store.table()
    );
    let keys: Vec<String> = keys.iter().map(|&key| key.to_owned()).collect();
    sqlx::query(sqlx::AssertSqlSafe(sql))
        .bind(keys)
        .execute(&mut *other)
        .await
        .expect("lock rows");
    other
}

/// A TCP forwarder on a loopback port to the real Postgres.
///
/// [`cut`](Self::cut) closes the port and every connection through it, as if the database
/// host went away; [`restore`](Self::restore) listens on the same port again.
/// [`mute`](Self::mute) and [`sever`](Self::sever) lose the server's answers and then the
/// connections they were for. [`messages`](Self::messages) counts what clients send
/// through it.
pub struct Forwarder {
    port: u16,
    upstream: SocketAddr,
    running: Mutex<Option<Running>>,
    messages: Arc<Messages>,
    /// One more than the generation of connections whose answers are dropped; 0 for none.
    muted: Arc<AtomicU64>,
    /// The generation of connections: `sever` closes every connection of the current one
    /// and starts the next.
    severed: watch::Sender<u64>,
}

/// The messages clients sent through a [`Forwarder`], by their type byte, once their
/// start-up message was through. Connect without TLS (`PgSslMode::Disable`): what is
/// encrypted cannot be read.
#[derive(Debug, Default)]
pub struct Messages(std::sync::Mutex<HashMap<u8, u64>>);

/// The type under which a `Sync` that follows nothing else since the last one is
/// counted: no statement, only a wait for the server to be ready. sqlx's pool sends one
/// whenever a connection goes back to it.
const PING: u8 = 0;

impl Messages {
    /// Statements sent: `Execute` messages of the extended protocol plus simple `Query`
    /// messages.
    pub fn statements(&self) -> u64 {
        self.of(b'E') + self.of(b'Q')
    }

    /// Round trips that carry work: a `Sync` of the extended protocol after messages for
    /// the server to work on (statements, or a statement to prepare), or a simple `Query`.
    pub fn round_trips(&self) -> u64 {
        self.of(b'S') + self.of(b'Q')
    }

    /// Messages of type `kind` so far.
    fn of(&self, kind: u8) -> u64 {
        self.0.lock().unwrap().get(&kind).copied().unwrap_or(0)
    }

    /// Starts counting from zero.
    pub fn reset(&self) {
        self.0.lock().unwrap().clear();
    }
}

/// Splits one connection's client-to-server bytes into messages: first the untyped
/// start-up message (after any untyped TLS or GSS request), then typed ones, each a type
/// byte and a big-endian length that counts itself but not the type. A connection that
/// turns out not to be plain protocol 3 (a TLS session, say) is no longer read.
#[derive(Default)]
struct Parser {
    started: bool,
    unreadable: bool,
    pending: Vec<u8>,
    /// Whether a message other than `Sync` came since the last `Sync`.
    work: bool,
}

impl Parser {
    /// Postgres's own bounds on an untyped start-up packet.
    const STARTUP_LENGTH: std::ops::RangeInclusive<usize> = 8..=10_000;

    fn feed(&mut self, bytes: &[u8], messages: &Messages) {
        if self.unreadable {
            return;
        }
        self.pending.extend_from_slice(bytes);
        loop {
            let header = if self.started { 5 } else { 4 };
            if self.pending.len() < header {
                return;
            }
            let at = header - 4;
            let length = u32::from_be_bytes(self.pending[at..header].try_into().unwrap()) as usize;
            if (!self.started && !Self::STARTUP_LENGTH.contains(&length)) || length < 4 {
                self.unreadable = true;
                self.pending = Vec::new();
                return;
            }
            let whole = at + length;
            if self.pending.len() < whole {
                return;
            }
            if self.started {
                let kind = match self.pending[0] {
                    b'S' if !self.work => PING,
                    kind => kind,
                };
                self.work = kind != b'S' && kind != PING;
                *messages.0.lock().unwrap().entry(kind).or_default() += 1;
            } else {
                // Protocol 3.x; the other codes are requests for TLS or GSS encryption.
                let code = u32::from_be_bytes(self.pending[4..8].try_into().unwrap());
                self.started = code >> 16 == 3;
            }
            self.pending.drain(..whole);
        }
    }
}

/// Copies a client's bytes to the server, counting its messages before they leave.
async fn count_and_copy(mut from: OwnedReadHalf, mut to: OwnedWriteHalf, messages: Arc<Messages>) {
    let mut parser = Parser::default();
    let mut buf = vec![0; 16 * 1024];
    while let Ok(n) = from.read(&mut buf).await {
        if n == 0 {
            break;
        }
        parser.feed(&buf[..n], &messages);
        if to.write_all(&buf[..n]).await.is_err() {
            return;
        }
    }
    let _ = to.shutdown().await;
}

/// Copies the server's answers to a client whose connection is of `generation`, dropping
/// them while that generation is `muted`.
async fn answer(
    mut from: OwnedReadHalf,
    mut to: OwnedWriteHalf,
    muted: Arc<AtomicU64>,
    generation: u64,
) {
    let mut buf = vec![0; 16 * 1024];
    while let Ok(n) = from.read(&mut buf).await {
        if n == 0 {
            break;
        }
        let dropped = muted.load(Ordering::SeqCst) == generation + 1;
        if !dropped && to.write_all(&buf[..n]).await.is_err() {
            return;
        }
    }
    let _ = to.shutdown().await;
}

struct Running {
    stop: oneshot::Sender<()>,
    task: JoinHandle<()>,
}

impl Forwarder {
    pub async fn start(upstream: SocketAddr) -> Self {
        let forwarder = Self {
            port: 0,
            upstream,
            running: Mutex::new(None),
            messages: Arc::default(),
            muted: Arc::default(),
            severed: watch::Sender::new(0),
        };
        let (port, running) = forwarder.listen(0).await;
        *forwarder.running.lock().await = Some(running);
        Self { port, ..forwarder }
    }

    /// The real server's address, as given by DATABASE_URL.
    pub async fn to_database() -> Self {
        let options = connect_options();
        let upstream = tokio::net::lookup_host((options.get_host(), options.get_port()))
            .await
            .expect("resolve the database host")
            .next()
            .expect("the database host has an address");
        Self::start(upstream).await
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// What clients have sent through the forwarder.
    pub fn messages(&self) -> &Messages {
        &self.messages
    }

    /// Drops the server's answers on every connection open now, until
    /// [`sever`](Self::sever) closes them: statements still reach the server and run
    /// there.
    pub fn mute(&self) {
        self.muted
            .store(*self.severed.borrow() + 1, Ordering::SeqCst);
    }

    /// Closes every connection open now, keeping the port open for new ones: their
    /// answers get through.
    pub fn sever(&self) {
        self.severed.send_modify(|generation| *generation += 1);
    }

    /// Options that connect through the forwarder.
    pub fn connect_options(&self) -> PgConnectOptions {
        connect_options().host("127.0.0.1").port(self.port)
    }

    async fn listen(&self, port: u16) -> (u16, Running) {
        let socket = TcpSocket::new_v4().expect("socket");
        socket.set_reuseaddr(true).expect("SO_REUSEADDR");
        socket
            .bind(SocketAddr::from(([127, 0, 0, 1], port)))
            .expect("bind the forwarder port");
        let listener = socket.listen(128).expect("listen");
        let port = listener.local_addr().expect("local address").port();
        let upstream = self.upstream;
        let messages = Arc::clone(&self.messages);
        let muted = Arc::clone(&self.muted);
        let severed = self.severed.clone();
        let (stop, mut stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            let mut connections = JoinSet::new();
            loop {
                tokio::select! {
                    _ = &mut stopped => break,
                    accepted = listener.accept() => {
                        let Ok((inbound, _)) = accepted else { continue };
                        let messages = Arc::clone(&messages);
                        let muted = Arc::clone(&muted);
                        let mut severed = severed.subscribe();
                        let generation = *severed.borrow_and_update();
                        connections.spawn(async move {
                            let Ok(outbound) = TcpStream::connect(upstream).await else { return };
                            let (client_reads, client_writes) = inbound.into_split();
                            let (server_reads, server_writes) = outbound.into_split();
                            let both = async {
                                tokio::join!(
                                    count_and_copy(client_reads, server_writes, messages),
                                    answer(server_reads, client_writes, muted, generation),
                                )
                            };
                            // Returning drops both sockets.
                            tokio::select! {
                                _ = both => {}
                                _ = severed.changed() => {}
                            }
                        });
                    }
                    Some(_) = connections.join_next(), if !connections.is_empty() => {}
                }
            }
            drop(listener);
            // Close every connection through the forwarder before `cut` returns.
            connections.shutdown().await;
        });
        (port, Running { stop, task })
    }

    /// Closes the port and every connection through it.
    pub async fn cut(&self) {
        if let Some(Running { stop, task }) = self.running.lock().await.take() {
            let _ = stop.send(());
            task.await.expect("forwarder task");
        }
    }

    /// Listens on the same port again.
    pub async fn restore(&self) {
        let mut running = self.running.lock().await;
        if running.is_none() {
            let (_, started) = self.listen(self.port).await;
            *running = Some(started);
        }
    }
}
