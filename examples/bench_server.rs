//! A minimal order endpoint for load tests, the same handler served with and without
//! `#[idempotent]`, so that the cost of the attribute can be read as a ratio.
//!
//! ```text
//! STORE=memory BIND=127.0.0.1:8080 WORKERS=2 cargo run --release --example bench_server
//! ```
//!
//! Configured by the environment only, so that a harness can drive other
//! implementations the same way:
//!
//! - `BIND`: the listen address (default `127.0.0.1:8080`);
//! - `WORKERS`: tokio worker threads (default: one per CPU);
//! - `STORE`: `none` (the handler without the attribute), `memory` (default), `redis`
//!   or `postgres`; or `tiered-redis` and `tiered-postgres`, where Redis or Postgres
//!   decides and an in-process `MemoryStore` serves the replays of the responses it holds
//!   (`TieredStore`), copies of those the server completed or replayed; or
//!   `tiered-redis-on-miss` and `tiered-postgres-on-miss`, the same with copies of the
//!   replayed ones only (`TieredStore::with_copy_on_completion(false)`);
//! - `REDIS_URL` (default `redis://127.0.0.1:6379`), `DATABASE_URL` (default
//!   `postgres://postgres@127.0.0.1:5432/test`): the server of `STORE=redis|postgres`
//!   and of their tiered forms; records go in the Postgres schema `idempotent_bench`,
//!   or under the Redis key prefix `idempotent_bench:`, which `scripts/load.sh` empties
//!   when it ends;
//! - `RUST_LOG`: the log filter (default `warn`, so that logging does not weigh on the
//!   numbers).
//!
//! Routes:
//!
//! - `POST /orders` with `{"item": "widget", "qty": 1}` and an `Idempotency-Key` header:
//!   counts a run, sleeps `x-sleep-ms` milliseconds when that header is present, and
//!   answers `201` with `{"item":..,"order_id":<run>,"qty":..,"status":"created"}`;
//! - `GET /stats`: `{"runs": <runs so far>}`;
//! - `GET /health`: `200`.

#[path = "common/store.rs"]
mod store;

use std::io::IsTerminal;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use axum::extract::{FromRef, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{MethodRouter, get, post};
use axum::{Json, Router};
use idempotent_runtime::{Idempotency, idempotent};
use serde::{Deserialize, Serialize};
use serde_json::json;
use tracing_subscriber::EnvFilter;

use store::{LocalCopies, StoreUrl};

/// How many times the order handler has run.
#[derive(Clone, Default)]
struct Runs(Arc<AtomicU64>);

#[derive(Clone, FromRef)]
struct IdempotentState {
    runs: Runs,
    idempotency: Idempotency,
}

#[derive(Deserialize)]
struct NewOrder {
    item: String,
    qty: i64,
}

#[derive(Serialize)]
struct Created {
    item: String,
    order_id: u64,
    qty: i64,
    status: &'static str,
}

/// The handler, written once: served bare for `STORE=none`, and through
/// [`create_idempotent`] otherwise.
async fn create(
    State(runs): State<Runs>,
    headers: HeaderMap,
    Json(order): Json<NewOrder>,
) -> Response {
    let order_id = runs.0.fetch_add(1, Ordering::SeqCst) + 1;
    if let Some(value) = headers.get("x-sleep-ms") {
        match value.to_str().ok().and_then(|v| v.parse::<u64>().ok()) {
            Some(ms) => tokio::time::sleep(Duration::from_millis(ms)).await,
            None => {
                let error = "x-sleep-ms must be a whole number of milliseconds";
                return (StatusCode::BAD_REQUEST, Json(json!({ "error": error }))).into_response();
            }
        }
    }
    let created = Created {
        item: order.item,
        order_id,
        qty: order.qty,
        status: "created",
    };
    (StatusCode::CREATED, Json(created)).into_response()
}

#[idempotent(ttl = "24h", key = header, required)]
async fn create_idempotent(
    runs: State<Runs>,
    headers: HeaderMap,
    order: Json<NewOrder>,
) -> Response {
    create(runs, headers, order).await
}

async fn stats(State(runs): State<Runs>) -> Json<serde_json::Value> {
    Json(json!({ "runs": runs.0.load(Ordering::SeqCst) }))
}

async fn health() -> StatusCode {
    StatusCode::OK
}

fn routes<S>(create: MethodRouter<S>) -> Router<S>
where
    Runs: FromRef<S>,
    S: Clone + Send + Sync + 'static,
{
    Router::new()
        .route("/orders", create)
        .route("/stats", get(stats))
        .route("/health", get(health))
}

/// The app for `idempotency`, or the bare handler for `None`. Visible to the crate
/// root so that `tests/bench_server.rs`, which includes this file, can drive it.
pub(crate) fn router(idempotency: Option<Idempotency>) -> Router {
    let runs = Runs::default();
    match idempotency {
        None => routes(post(create)).with_state(runs),
        Some(idempotency) => {
            routes(post(create_idempotent)).with_state(IdempotentState { runs, idempotency })
        }
    }
}

struct Config {
    bind: String,
    workers: usize,
    store: Option<StoreUrl>,
    /// Whether in-process copies of responses serve replays.
    local_copies: LocalCopies,
}

fn env_or(name: &str, default: &str) -> Result<String, String> {
    match std::env::var(name) {
        Ok(value) if !value.is_empty() => Ok(value),
        Ok(_) | Err(std::env::VarError::NotPresent) => Ok(default.to_owned()),
        Err(std::env::VarError::NotUnicode(_)) => Err(format!("`{name}` is not valid UTF-8")),
    }
}

impl Config {
    fn from_env() -> Result<Self, String> {
        let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
        let workers = match env_or("WORKERS", "")?.as_str() {
            "" => cpus,
            value => match value.parse::<usize>() {
                Ok(n) if n >= 1 => n,
                _ => {
                    return Err(format!(
                        "`WORKERS` must be a number of threads, got `{value}`"
                    ));
                }
            },
        };
        let store = env_or("STORE", "memory")?;
        let (local_copies, shared) = match store.strip_prefix("tiered-") {
            Some(shared @ ("redis" | "postgres")) => (LocalCopies::OfCompletions, shared),
            Some(tiered) => match tiered.strip_suffix("-on-miss") {
                Some(shared @ ("redis" | "postgres")) => (LocalCopies::OfReplays, shared),
                _ => (LocalCopies::Off, store.as_str()),
            },
            None => (LocalCopies::Off, store.as_str()),
        };
        let store = match shared {
            "none" => None,
            "memory" => Some(StoreUrl::Memory),
            "redis" => Some(url_for("REDIS_URL", "redis://127.0.0.1:6379", "redis")?),
            "postgres" => Some(url_for(
                "DATABASE_URL",
                "postgres://postgres@127.0.0.1:5432/test",
                "postgres",
            )?),
            _ => {
                return Err(format!(
                    "unknown `STORE={store}`: expected `none`, `memory`, `redis`, `postgres`, \
                     `tiered-redis`, `tiered-postgres`, `tiered-redis-on-miss` or \
                     `tiered-postgres-on-miss`"
                ));
            }
        };
        Ok(Self {
            bind: env_or("BIND", "127.0.0.1:8080")?,
            workers,
            store,
            local_copies,
        })
    }
}

fn url_for(var: &str, default: &str, scheme: &str) -> Result<StoreUrl, String> {
    let url = env_or(var, default)?;
    if !url.starts_with(scheme) {
        return Err(format!("`{var}` must be a `{scheme}://` URL"));
    }
    StoreUrl::parse(&url)
}

fn main() -> ExitCode {
    let config = match Config::from_env() {
        Ok(config) => config,
        Err(err) => {
            eprintln!("error: {err}");
            return ExitCode::from(2);
        }
    };
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .init();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(config.workers)
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(err) => {
            eprintln!("error: cannot start the tokio runtime: {err}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(serve(config)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {err}");
            ExitCode::FAILURE
        }
    }
}

async fn serve(config: Config) -> Result<(), String> {
    let opened = match &config.store {
        None => None,
        Some(store) => Some(store.open("idempotent_bench", config.local_copies).await?),
    };
    let idempotency = opened.as_ref().map(|opened| opened.idempotency.clone());
    let listener = tokio::net::TcpListener::bind(&config.bind)
        .await
        .map_err(|err| format!("cannot listen on {}: {err}", config.bind))?;
    let addr = listener
        .local_addr()
        .map_err(|err| format!("cannot read the listening address: {err}"))?;
    let mut store = config
        .store
        .as_ref()
        .map_or_else(|| "none".to_owned(), ToString::to_string);
    match config.local_copies {
        LocalCopies::Off => {}
        LocalCopies::OfCompletions => store.push_str(", replays from memory"),
        LocalCopies::OfReplays => store.push_str(", replays from memory, filled on misses"),
    }
    println!(
        "listening on http://{addr} (store {store}, {} workers)",
        config.workers
    );
    axum::serve(listener, router(idempotency))
        .await
        .map_err(|err| format!("server error: {err}"))
}
