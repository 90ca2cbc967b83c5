use axum::http::{HeaderMap, Method, Uri};
use idempotent_runtime::idempotent;

#[idempotent]
async fn create(
    _m1: Method,
    _u1: Uri,
    _h1: HeaderMap,
    _m2: Method,
    _u2: Uri,
    _h2: HeaderMap,
    _m3: Method,
    _u3: Uri,
    _h3: HeaderMap,
    _m4: Method,
    _u4: Uri,
    _h4: HeaderMap,
    _m5: Method,
    _u5: Uri,
    _h5: HeaderMap,
    _m6: Method,
    _u6: Uri,
) {
}

fn main() {}
