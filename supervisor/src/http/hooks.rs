//! `POST /hooks/{hook}`: a host application fires a hook; every plugin that declared it
//! answers, combined by the hook's mode (see [`crate::supervise::hooks`]).
//!
//! Firing a hook needs a token with the `admin` or `host` role. Hooks under `plugd.` are
//! plugd's own and cannot be fired from outside. The body is refused before any plugin sees
//! it when it is larger than [`MAX_HOOK_BODY`] (413) or nests deeper than the protocol carries
//! (400), so no plugin is ever cut off for a payload plugd chose to forward.

use super::auth::may_fire_hooks;
use super::error::ApiError;
use super::Edge;
use crate::ipc::RESERVED_PREFIX;
use crate::supervise::hooks::{self, FireError};
use axum::body::{Body, Bytes};
use axum::extract::{Path, State};
use axum::http::header::{CONNECTION, CONTENT_TYPE};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use plugd_protocol::depth::{json_depth, MAX_PAYLOAD_DEPTH};
use serde_json::Value;
use std::sync::Arc;

/// Largest hook payload accepted over HTTP: 1 MiB.
pub const MAX_HOOK_BODY: usize = 1024 * 1024;

/// Longest a client may take to send a hook payload.
pub const HOOK_BODY_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

fn is_msgpack(headers: &HeaderMap) -> bool {
    headers
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| {
            v.starts_with("application/msgpack") || v.starts_with("application/x-msgpack")
        })
}

fn too_deep(depth: usize) -> ApiError {
    ApiError::bad_request(
        "invalid payload",
        format!("the payload nests {depth} levels deep; at most {MAX_PAYLOAD_DEPTH} are allowed"),
    )
}

/// The payload in `body`, checked for its depth before it is parsed.
fn payload(body: &Bytes, msgpack: bool) -> Result<rmpv::Value, ApiError> {
    if body.is_empty() {
        return Ok(rmpv::Value::Nil);
    }
    if msgpack {
        // The decoder stops past the cap; the dispatcher checks the exact depth of what it reads.
        return rmpv::decode::read_value_with_max_depth(&mut &body[..], MAX_PAYLOAD_DEPTH + 1)
            .map_err(|e| match e {
                rmpv::decode::Error::DepthLimitExceeded => too_deep(MAX_PAYLOAD_DEPTH + 1),
                e => ApiError::bad_request(
                    "invalid payload",
                    format!("the body is not MessagePack: {e}"),
                ),
            });
    }
    let depth = json_depth(body);
    if depth > MAX_PAYLOAD_DEPTH {
        return Err(too_deep(depth));
    }
    let value = serde_json::from_slice::<Value>(body).map_err(|e| {
        ApiError::bad_request("invalid payload", format!("the body is not JSON: {e}"))
    })?;
    rmpv::ext::to_value(&value).map_err(|e| {
        ApiError::bad_request("invalid payload", format!("cannot carry the JSON: {e}"))
    })
}

/// `POST /hooks/{hook}`: the body (JSON, or MessagePack by Content-Type) is the payload; the
/// answer comes back in the same format.
pub async fn post_hook(
    State(edge): State<Arc<Edge>>,
    Path(hook): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    may_fire_hooks(&edge.admin_tokens, &headers)?;
    if hook.starts_with(RESERVED_PREFIX) {
        return Err(ApiError::bad_request(
            "reserved hook",
            format!("hook {hook:?} is reserved: hooks under {RESERVED_PREFIX:?} are fired by plugd only"),
        ));
    }
    let body = axum::body::to_bytes(body, MAX_HOOK_BODY)
        .await
        .map_err(|_| {
            ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "payload too large",
                format!("a hook payload may be at most {MAX_HOOK_BODY} bytes"),
            )
            // The rest of the body is never read, so this connection cannot carry another
            // request.
            .with_header(CONNECTION, HeaderValue::from_static("close"))
        })?;
    let msgpack = is_msgpack(&headers);
    let payload = payload(&body, msgpack)?;
    let plugins = edge.registry.snapshot();
    let timeout = edge.registry.hook_timeout();
    match hooks::fire(&plugins, &hook, payload, 0, timeout).await {
        Ok(fired) if msgpack => match rmp_serde::to_vec_named(&fired.to_value()) {
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
        Ok(fired) => Ok(axum::Json(fired).into_response()),
        Err(e @ FireError::PayloadTooDeep(_)) => {
            Err(ApiError::bad_request("invalid payload", e.to_string()))
        }
        Err(e @ FireError::ChainTooDeep) => Err(ApiError::new(
            StatusCode::LOOP_DETECTED,
            "hook call refused",
            e.to_string(),
        )),
    }
}
