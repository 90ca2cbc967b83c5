// Form and multipart handlers with the arguments that fit them.
use axum::extract::{Form, Multipart};
use axum::routing::post;
use axum::Router;
use idempotent_runtime::{idempotent, Idempotency, MemoryStore};

#[derive(serde::Deserialize)]
struct Payment {
    amount: u64,
}

#[idempotent(key = header, fingerprint = exclude("/sent_at"))]
async fn pay(Form(payment): Form<Payment>) -> String {
    payment.amount.to_string()
}

#[idempotent(key = query("key"))]
async fn upload(mut multipart: Multipart) -> String {
    let _ = multipart.next_field().await;
    String::new()
}

fn main() {
    let _app: Router = Router::new()
        .route("/pay", post(pay))
        .route("/upload", post(upload))
        .with_state(Idempotency::new(MemoryStore::new()));
}
