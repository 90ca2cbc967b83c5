use axum::Json;
use axum::extract::Path;
use idempotent_runtime::idempotent;

#[idempotent]
#[utoipa::path(post, path = "/orders/{id}", responses((status = 201)))]
async fn create(Path(id): Path<u32>, Json(n): Json<u32>) -> String {
    format!("{id} {n}")
}

fn main() {}
