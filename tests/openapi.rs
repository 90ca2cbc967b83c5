//! utoipa's `#[utoipa::path]` above `#[idempotent]`: the OpenAPI document describes the
//! handler's own arguments, and the handler is still idempotent.

use axum::body::Body;
use axum::extract::Path;
use axum::http::{Request, StatusCode};
use axum::{Json, Router, routing::post};
use http_body_util::BodyExt;
use idempotent_runtime::{Idempotency, MemoryStore, idempotent};
use serde::{Deserialize, Serialize};
use tower::ServiceExt;
use utoipa::{OpenApi, ToSchema};

#[derive(Deserialize, Serialize, ToSchema)]
struct Refund {
    amount: u64,
}

/// Refunds part of an order.
#[utoipa::path(
    post,
    path = "/orders/{id}/refunds",
    responses((status = 201, description = "Refunded", body = Refund))
)]
#[idempotent(required)]
async fn refund(Path(id): Path<u64>, Json(refund): Json<Refund>) -> (StatusCode, String) {
    (
        StatusCode::CREATED,
        format!("order {id}: {}", refund.amount),
    )
}

#[derive(OpenApi)]
#[openapi(paths(refund))]
struct Api;

#[test]
fn the_document_describes_the_handlers_own_arguments() {
    let document = serde_json::to_value(Api::openapi()).unwrap();
    let operation = &document["paths"]["/orders/{id}/refunds"]["post"];
    assert_eq!(operation["operationId"], "refund");
    assert_eq!(operation["summary"], "Refunds part of an order.");
    let parameters = operation["parameters"].as_array().unwrap();
    assert_eq!(parameters.len(), 1, "{parameters:?}");
    assert_eq!(parameters[0]["name"], "id");
    assert_eq!(parameters[0]["in"], "path");
    assert_eq!(
        operation["requestBody"]["content"]["application/json"]["schema"]["$ref"],
        "#/components/schemas/Refund"
    );
}

#[tokio::test]
async fn the_documented_handler_is_still_idempotent() {
    let app = Router::new()
        .route("/orders/{id}/refunds", post(refund))
        .with_state(Idempotency::new(MemoryStore::new()));
    let send = |key: Option<&str>| {
        let mut request =
            Request::post("/orders/7/refunds").header("content-type", "application/json");
        if let Some(key) = key {
            request = request.header("idempotency-key", key);
        }
        let request = request.body(Body::from(r#"{"amount": 5}"#)).unwrap();
        let app = app.clone();
        async move {
            let response = app.oneshot(request).await.unwrap();
            let replayed = response.headers().contains_key("idempotent-replayed");
            let status = response.status();
            let body = response.into_body().collect().await.unwrap().to_bytes();
            (status, replayed, String::from_utf8(body.to_vec()).unwrap())
        }
    };
    let first = send(Some("r-1")).await;
    assert_eq!(first, (StatusCode::CREATED, false, "order 7: 5".into()));
    let retry = send(Some("r-1")).await;
    assert_eq!(retry, (StatusCode::CREATED, true, "order 7: 5".into()));
    // `required` came through too.
    assert_eq!(send(None).await.0, StatusCode::BAD_REQUEST);
}
