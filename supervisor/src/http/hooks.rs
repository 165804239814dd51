//! `POST /hooks/{hook}`: a host application fires a hook; every plugin that declared it
//! answers, combined by the hook's mode (see [`crate::supervise::hooks`]).

use super::error::ApiError;
use super::Edge;
use crate::supervise::hooks;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::header::CONTENT_TYPE;
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::Value;
use std::sync::Arc;

fn is_msgpack(headers: &HeaderMap) -> bool {
    headers
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| {
            v.starts_with("application/msgpack") || v.starts_with("application/x-msgpack")
        })
}

/// `POST /hooks/{hook}`: the body (JSON, or MessagePack by Content-Type) is the payload; the
/// answer comes back in the same format.
pub async fn post_hook(
    State(edge): State<Arc<Edge>>,
    Path(hook): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    let msgpack = is_msgpack(&headers);
    let payload = if body.is_empty() {
        rmpv::Value::Nil
    } else if msgpack {
        match rmpv::decode::read_value(&mut &body[..]) {
            Ok(v) => v,
            Err(e) => {
                return Err(ApiError::bad_request(
                    "invalid payload",
                    format!("the body is not MessagePack: {e}"),
                ))
            }
        }
    } else {
        match serde_json::from_slice::<Value>(&body) {
            Ok(v) => rmpv::ext::to_value(&v).unwrap_or(rmpv::Value::Nil),
            Err(e) => {
                return Err(ApiError::bad_request(
                    "invalid payload",
                    format!("the body is not JSON: {e}"),
                ))
            }
        }
    };
    let plugins = edge.registry.snapshot();
    let timeout = edge.registry.hook_timeout();
    match hooks::fire(&plugins, &hook, payload, 0, timeout).await {
        Ok(answer) if msgpack => match rmp_serde::to_vec_named(&answer) {
            Ok(bytes) => Ok((
                [(
                    CONTENT_TYPE,
                    HeaderValue::from_static("application/msgpack"),
                )],
                bytes,
            )
                .into_response()),
            Err(e) => Err(ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "cannot encode the answer",
                e.to_string(),
            )),
        },
        Ok(answer) => Ok(axum::Json(answer).into_response()),
        Err(e) => Err(ApiError::new(
            StatusCode::LOOP_DETECTED,
            "hook call refused",
            e,
        )),
    }
}
