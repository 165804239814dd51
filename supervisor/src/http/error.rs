//! The one error answer of plugd's HTTP edge: a status and a JSON body `{"error", "detail"}`
//! (plus, on a conflict, the current record), with headers such as `Retry-After` or `Allow`.
//! Every handler answers its failures with an [`ApiError`], and so do the extractors: a query
//! or path that does not parse is a 400 in the same shape ([`Query`], [`Path`]), never axum's
//! plain-text rejection.

use axum::extract::FromRequestParts;
use axum::http::header::{HeaderName, HeaderValue};
use axum::http::request::Parts;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
pub use plugd_api::ErrorBody;
use plugd_api::PluginRecord;

/// An error answer: what went wrong (`error`, short and stable) and the details (`detail`,
/// which say what to do).
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    body: ErrorBody,
    headers: Vec<(HeaderName, HeaderValue)>,
}

impl ApiError {
    /// An error answer with `status`.
    pub fn new(status: StatusCode, error: &'static str, detail: impl Into<String>) -> ApiError {
        ApiError {
            status,
            body: ErrorBody {
                error: error.to_owned(),
                detail: detail.into(),
                current: None,
                fields: Vec::new(),
            },
            headers: Vec::new(),
        }
    }

    /// With every refused value named (a 400 of a change of settings).
    pub fn with_fields(mut self, fields: Vec<plugd_api::FieldProblem>) -> ApiError {
        self.body.fields = fields;
        self
    }

    /// 400: the request itself is wrong.
    pub fn bad_request(error: &'static str, detail: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::BAD_REQUEST, error, detail)
    }

    /// 404: no such thing.
    pub fn not_found(error: &'static str, detail: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::NOT_FOUND, error, detail)
    }

    /// 503 with `Retry-After: 1`: try again shortly.
    pub fn unavailable(error: &'static str, detail: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::SERVICE_UNAVAILABLE, error, detail).with_header(
            axum::http::header::RETRY_AFTER,
            HeaderValue::from_static("1"),
        )
    }

    /// 401 with the `WWW-Authenticate: Bearer` challenge.
    pub fn unauthorized(detail: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::UNAUTHORIZED, "unauthorized", detail).with_header(
            axum::http::header::WWW_AUTHENTICATE,
            HeaderValue::from_static("Bearer"),
        )
    }

    /// Adds a header to the answer.
    pub fn with_header(mut self, name: HeaderName, value: HeaderValue) -> ApiError {
        self.headers.push((name, value));
        self
    }

    /// Adds the plugin's current record to the body (on a conflict).
    pub fn with_current(mut self, record: PluginRecord) -> ApiError {
        self.body.current = Some(Box::new(record));
        self
    }

    /// The status it answers with.
    pub fn status(&self) -> StatusCode {
        self.status
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut response = (self.status, Json(self.body)).into_response();
        for (name, value) in self.headers {
            response.headers_mut().insert(name, value);
        }
        response
    }
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.body.error, self.body.detail)
    }
}

/// `axum::extract::Query`, whose rejection is an [`ApiError`] naming what did not parse.
#[derive(Debug)]
pub struct Query<T>(pub T);

impl<S: Send + Sync, T: serde::de::DeserializeOwned> FromRequestParts<S> for Query<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        axum::extract::Query::<T>::from_request_parts(parts, state)
            .await
            .map(|axum::extract::Query(q)| Query(q))
            .map_err(|e| ApiError::bad_request("invalid query", e.body_text()))
    }
}

/// `axum::extract::Path`, whose rejection is an [`ApiError`] naming what did not parse.
#[derive(Debug)]
pub struct Path<T>(pub T);

impl<S: Send + Sync, T: serde::de::DeserializeOwned + Send> FromRequestParts<S> for Path<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        axum::extract::Path::<T>::from_request_parts(parts, state)
            .await
            .map(|axum::extract::Path(p)| Path(p))
            .map_err(|e| ApiError::bad_request("invalid path", e.body_text()))
    }
}
