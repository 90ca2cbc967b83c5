use axum::extract::{Form, Multipart, RawForm};
use idempotent_runtime::idempotent;

#[derive(serde::Deserialize)]
struct Payment {
    amount: u64,
}

#[idempotent(key = json("/id"))]
async fn pay(Form(payment): Form<Payment>) -> String {
    payment.amount.to_string()
}

#[idempotent(key = json("/id"))]
async fn pay_raw(form: RawForm) -> String {
    form.0.len().to_string()
}

#[idempotent(fingerprint = exclude("/sent_at"))]
async fn upload(mut multipart: Multipart) -> String {
    let _ = multipart.next_field().await;
    String::new()
}

#[idempotent(fingerprint = exclude("/meta/sent_at"))]
async fn pay_nested(Form(payment): Form<Payment>) -> String {
    payment.amount.to_string()
}

fn main() {}
