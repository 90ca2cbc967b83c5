use axum::extract::rejection::{FormRejection, JsonRejection};
use axum::extract::{Form, FromRequest, Request};
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use axum::{Json, Router, routing::post};
use idempotent_runtime::{Idempotency, MemoryStore, idempotent};

/// What axum-extra's `WithRejection` does: extract `T`, turning its rejection into `E`.
struct WithRejection<T, E>(T, std::marker::PhantomData<E>);

impl<S, T, E> FromRequest<S> for WithRejection<T, E>
where
    S: Send + Sync,
    T: FromRequest<S>,
    E: From<T::Rejection> + IntoResponse,
{
    type Rejection = E;

    async fn from_request(req: Request, state: &S) -> Result<Self, E> {
        let value = T::from_request(req, state).await?;
        Ok(Self(value, std::marker::PhantomData))
    }
}

struct ApiError;

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        Response::default()
    }
}

impl From<JsonRejection> for ApiError {
    fn from(_: JsonRejection) -> Self {
        Self
    }
}

impl From<FormRejection> for ApiError {
    fn from(_: FormRejection) -> Self {
        Self
    }
}

#[derive(serde::Deserialize)]
struct Order {
    item: String,
}

#[idempotent]
async fn create(
    WithRejection(Json(order), _): WithRejection<Json<Order>, ApiError>,
    headers: HeaderMap,
) -> String {
    format!("{} {}", order.item, headers.len())
}

#[idempotent(key = json("/id"))]
async fn pay(WithRejection(Form(order), _): WithRejection<Form<Order>, ApiError>) -> String {
    order.item
}

fn main() {
    let _app: Router = Router::new()
        .route("/orders", post(create))
        .route("/pay", post(pay))
        .with_state(Idempotency::new(MemoryStore::new()));
}
