//! Who may do what at the HTTP edge: bearer tokens (compared in constant time against every
//! configured token), their roles (`admin` everything, `viewer` reads the admin API, `host`
//! fires hooks and nothing else), and the permissions a plugin route may require of its caller.

use super::error::ApiError;
use super::Edge;
use crate::settings::{AdminToken, Role};
use axum::extract::{Request, State};
use axum::http::{HeaderMap, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use std::sync::Arc;
use subtle::ConstantTimeEq;

/// Who made an admin request: the token's name (written to the audit log) and role.
#[derive(Debug, Clone)]
pub struct Actor {
    /// The token's name.
    pub name: String,
    /// What it may do.
    pub role: Role,
}

/// The configured token the request's `Authorization: Bearer …` presents, compared in constant
/// time against every token so the time taken does not say which one came close.
pub fn bearer_token<'a>(
    tokens: &'a [AdminToken],
    headers: &HeaderMap,
) -> Result<&'a AdminToken, &'static str> {
    let presented = headers
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim)
        .ok_or("send Authorization: Bearer <token>")?;
    let mut found = None;
    for t in tokens {
        let equal: bool = t.token.as_bytes().ct_eq(presented.as_bytes()).into();
        if equal {
            found = Some(t);
        }
    }
    found.ok_or("the token is not valid")
}

/// The admin API's gate: a valid token, and a role that may do this (viewers only read).
/// With no token configured the API refuses every request: an unauthenticated control plane
/// is never the default.
pub async fn authenticate(
    State(edge): State<Arc<Edge>>,
    mut request: Request,
    next: Next,
) -> Response {
    if !edge.admin_tokens.iter().any(|t| t.role != Role::Host) {
        return ApiError::new(
            StatusCode::FORBIDDEN,
            "admin API disabled",
            "no admin or viewer token is configured: set PLUGD_ADMIN_TOKEN or [[admin_tokens]] in the config file",
        )
        .into_response();
    }
    let token = match bearer_token(&edge.admin_tokens, request.headers()) {
        Ok(token) => token,
        Err(detail) => return ApiError::unauthorized(detail).into_response(),
    };
    if token.role == Role::Host {
        return ApiError::new(
            StatusCode::FORBIDDEN,
            "forbidden",
            format!(
                "token {:?} has the host role, which may only fire hooks",
                token.name
            ),
        )
        .into_response();
    }
    let read_only = matches!(*request.method(), Method::GET | Method::HEAD);
    if token.role == Role::Viewer && !read_only {
        return ApiError::new(
            StatusCode::FORBIDDEN,
            "forbidden",
            format!(
                "token {:?} has the viewer role, which may only read",
                token.name
            ),
        )
        .into_response();
    }
    request.extensions_mut().insert(Actor {
        name: token.name.clone(),
        role: token.role,
    });
    next.run(request).await
}

/// Checks the caller's token holds `permission`, which `path` of `plugin` requires: 401 without
/// a valid token, 403 naming the missing permission.
pub fn authorize<'a>(
    tokens: &'a [AdminToken],
    headers: &HeaderMap,
    permission: &str,
    plugin: &str,
    path: &str,
) -> Result<&'a AdminToken, ApiError> {
    let token = bearer_token(tokens, headers).map_err(|detail| {
        ApiError::unauthorized(format!(
            "{path} of plugin {plugin:?} requires permission {permission:?}: {detail}"
        ))
    })?;
    if token.permissions.iter().any(|p| p == permission) {
        Ok(token)
    } else {
        Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "missing permission",
            format!(
                "token {:?} lacks permission {permission:?}, which {path} of plugin {plugin:?} requires",
                token.name
            ),
        ))
    }
}

/// Checks the caller may fire hooks: a valid token with the `admin` or `host` role. 401 without
/// one, 403 for a `viewer` token.
pub fn may_fire_hooks<'a>(
    tokens: &'a [AdminToken],
    headers: &HeaderMap,
) -> Result<&'a AdminToken, ApiError> {
    if tokens.is_empty() {
        return Err(ApiError::unauthorized(
            "firing hooks needs a token with the admin or host role, and none is configured: set PLUGD_HOST_TOKEN or [[admin_tokens]] in the config file",
        ));
    }
    let token = bearer_token(tokens, headers).map_err(|detail| {
        ApiError::unauthorized(format!(
            "firing hooks needs a token with the admin or host role: {detail}"
        ))
    })?;
    match token.role {
        Role::Admin | Role::Host => Ok(token),
        Role::Viewer => Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "forbidden",
            format!(
                "token {:?} has the viewer role, which may not fire hooks",
                token.name
            ),
        )),
    }
}
