//! The `orders` service: the router, its state and its handlers, apart from `main` so
//! that the tests drive exactly the app the example serves.
//!
//! - `POST /orders` with `{"product": "...", "quantity": N}` and an `Idempotency-Key`
//!   header creates an order once per key: `201` with the order, replayed on retries.
//!   A quantity below 1 is a `400` that is not stored, so the key can be used again.
//! - `GET /orders` lists the orders this process created, oldest first.

use std::hash::{BuildHasher, RandomState};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use axum::extract::{FromRef, State};
use axum::http::StatusCode;
use axum::routing::post;
use axum::{Json, Router};
use idempotent_runtime::{Idempotency, idempotent};
use serde::{Deserialize, Serialize};

/// The body of `POST /orders`.
#[derive(Debug, Deserialize)]
pub struct NewOrder {
    product: String,
    /// Signed, so that a negative quantity reaches the handler's own check (a `400`
    /// naming the field) instead of failing deserialisation.
    quantity: i64,
}

/// An order as created and returned.
#[derive(Debug, Clone, Serialize)]
pub struct Order {
    order_id: String,
    product: String,
    quantity: i64,
}

/// The error body of the handler's own `400`.
#[derive(Debug, Serialize)]
pub struct ApiError {
    error: &'static str,
    detail: String,
}

/// The orders created by this process, and what creating one costs.
#[derive(Clone)]
pub struct Orders {
    inner: Arc<Inner>,
}

struct Inner {
    /// Time spent in the simulated payment call of each creation.
    work: Duration,
    /// Random per process, so that order ids from several replicas never collide.
    id_prefix: String,
    executions: AtomicU64,
    created: Mutex<Vec<Order>>,
}

impl Orders {
    /// No orders yet; each creation spends `work` in its payment call.
    pub fn new(work: Duration) -> Self {
        let random = RandomState::new().hash_one(std::process::id());
        Self {
            inner: Arc::new(Inner {
                work,
                id_prefix: format!("{:08x}", random as u32),
                executions: AtomicU64::new(0),
                created: Mutex::new(Vec::new()),
            }),
        }
    }

    /// How many times the create handler has started, whatever it answered.
    pub fn executions(&self) -> u64 {
        self.inner.executions.load(Ordering::SeqCst)
    }

    /// The orders created so far, oldest first.
    pub fn list(&self) -> Vec<Order> {
        self.created().clone()
    }

    fn created(&self) -> std::sync::MutexGuard<'_, Vec<Order>> {
        // A panic while holding the lock cannot leave the list half-written (a push is
        // the only write), so a poisoned lock is still safe to use.
        self.inner
            .created
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    fn record(&self, new: NewOrder) -> Order {
        let mut created = self.created();
        let order = Order {
            order_id: format!("ord_{}_{}", self.inner.id_prefix, created.len() + 1),
            product: new.product,
            quantity: new.quantity,
        };
        created.push(order.clone());
        order
    }
}

#[derive(Clone, FromRef)]
struct AppState {
    orders: Orders,
    idempotency: Idempotency,
}

/// The service: `POST /orders` and `GET /orders` over `orders`, with the idempotency
/// store and defaults of `idempotency`.
pub fn router(orders: Orders, idempotency: Idempotency) -> Router {
    Router::new()
        .route("/orders", post(create_order).get(list_orders))
        .with_state(AppState {
            orders,
            idempotency,
        })
}

/// Creates an order, at most once per `Idempotency-Key`; a request without one is a
/// `400`. The lease comes from the app-wide default (`--lease-ms`).
#[idempotent(ttl = "24h", key = header, required)]
async fn create_order(
    State(orders): State<Orders>,
    Json(new): Json<NewOrder>,
) -> Result<(StatusCode, Json<Order>), (StatusCode, Json<ApiError>)> {
    orders.inner.executions.fetch_add(1, Ordering::SeqCst);
    if new.quantity < 1 {
        return Err((
            StatusCode::BAD_REQUEST,
            Json(ApiError {
                error: "invalid_quantity",
                detail: format!("quantity must be at least 1, got {}", new.quantity),
            }),
        ));
    }
    // The payment call: the side effect a retry must not repeat.
    tokio::time::sleep(orders.inner.work).await;
    let order = orders.record(new);
    tracing::info!(order_id = %order.order_id, "order created");
    Ok((StatusCode::CREATED, Json(order)))
}

async fn list_orders(State(orders): State<Orders>) -> Json<Vec<Order>> {
    Json(orders.list())
}
