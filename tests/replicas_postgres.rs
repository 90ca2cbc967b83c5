//! Several app replicas over one Postgres, end to end over real HTTP: a storm of retries
//! and a replica that dies mid-request. Each replica has a pool of its own, as separate
//! processes would; each test has a schema of its own, dropped at its end. (The database
//! going away is in `postgres_http.rs`.)
#![cfg(feature = "postgres")]

mod support;

use support::postgres::{fresh_store, store_in};
use support::replicas;

/// Requests with the same key, spread over four replicas at once: the handler runs once
/// per key in total; every other answer is a 409 or the replay of that one response.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_storm_over_replicas_runs_the_handler_once_per_key() {
    let (_, schema) = fresh_store().await;
    replicas::storm_runs_the_handler_once_per_key(|| store_in(schema.name())).await;
}

/// A replica dies in the middle of a request: another answers 409 while the lease lasts,
/// and runs the request itself once it has lapsed, never before.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_dead_replicas_request_is_taken_over_after_its_lease() {
    let (_, schema) = fresh_store().await;
    let name = schema.name().to_owned();
    replicas::dead_replicas_request_is_taken_over_after_its_lease(move || {
        let name = name.clone();
        async move { store_in(&name).await }
    })
    .await;
}
