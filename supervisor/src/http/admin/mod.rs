//! The admin REST API under `/admin`: JSON in and out, typed by the `plugd-api` crate, bearer
//! tokens with roles (see [`super::auth`]), every change written to the audit log with the
//! token's name. One file per resource: [`plugins`] (state and actions), [`settings`], [`bundles`] (install,
//! uninstall), [`events`] (the audit log), [`workers`], [`permissions`], [`stats`], [`me`]
//! (the caller's identity) and [`stream`] (the live stream). [`doc`] is the OpenAPI document,
//! generated from the same handlers and types and served without a token at
//! `/admin/openapi.json`.
//!
//! Handlers write the desired state to the store and send the reconcile loop an event; they
//! never touch a plugin's process or visible state. The one exception: a change of settings is
//! offered to the running instance before it is stored (see [`settings`]).

pub mod bundles;
pub mod doc;
pub mod events;
pub mod me;
pub mod permissions;
pub mod plugins;
pub mod releases;
pub mod settings;
pub mod stats;
pub mod stream;
pub mod workers;

use super::auth::authenticate;
use super::error::ApiError;
use super::Edge;
use crate::supervise::Event;
use axum::extract::DefaultBodyLimit;
use axum::http::header::CONTENT_TYPE;
use axum::http::StatusCode;
use axum::middleware;
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;
use std::sync::Arc;
use utoipa::OpenApi;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

/// The `/admin` routes (to nest under `/admin`) and the OpenAPI document that describes them.
pub fn router(edge: Arc<Edge>) -> (Router<Arc<Edge>>, utoipa::openapi::OpenApi) {
    let (routes, api) = OpenApiRouter::with_openapi(doc::AdminDoc::openapi())
        .routes(routes!(plugins::list))
        .routes(routes!(bundles::install))
        .routes(routes!(plugins::get_one, bundles::uninstall))
        .routes(routes!(plugins::enable))
        .routes(routes!(plugins::disable))
        .routes(routes!(plugins::reload))
        .routes(routes!(plugins::restart))
        .routes(routes!(plugins::logs))
        .routes(routes!(releases::versions))
        .routes(routes!(releases::bundle))
        .routes(routes!(releases::rollback))
        .routes(routes!(releases::promote))
        .routes(routes!(releases::canary))
        .routes(routes!(settings::get, settings::put, settings::patch))
        .routes(routes!(settings::reset))
        .routes(routes!(events::list))
        .routes(routes!(permissions::list))
        .routes(routes!(workers::list))
        .routes(routes!(stats::get))
        .routes(routes!(me::whoami))
        .routes(routes!(stream::stream))
        .split_for_parts();
    let api = doc::under("/admin", api);
    let json: Arc<str> = api.to_json().unwrap_or_default().into();
    let routes =
        routes
            .fallback(|| async {
                ApiError::new(StatusCode::NOT_FOUND, "not found", "no such admin endpoint")
            })
            // Only the install reads a body; a bundle may be this large.
            .layer(DefaultBodyLimit::max(bundles::MAX_BUNDLE))
            .layer(middleware::from_fn_with_state(edge, authenticate))
            // Added after the token check: reading the schema needs no token.
            .route(
                "/openapi.json",
                get(move || {
                    let json = json.clone();
                    async move {
                        ([(CONTENT_TYPE, "application/json")], json.to_string()).into_response()
                    }
                }),
            );
    (routes, api)
}

/// 503 for a store that failed, logged with its cause.
fn store_error(e: anyhow::Error) -> ApiError {
    tracing::error!("admin: {e:#}");
    ApiError::unavailable(
        "store unavailable",
        format!("{e:#}; try again when the database is back"),
    )
}

/// 404 for a plugin the store does not know.
fn unknown(name: &str) -> ApiError {
    ApiError::not_found(
        "unknown plugin",
        format!("no plugin named {name:?} is registered"),
    )
}

/// The store's record of plugin `name`: 404 when it is not registered, 503 when the store is
/// away.
async fn record_of(edge: &Edge, name: &str) -> Result<crate::store::PluginRecord, ApiError> {
    edge.store
        .plugin(name)
        .await
        .map_err(store_error)?
        .ok_or_else(|| unknown(name))
}

/// Hands an event to the reconcile loop.
fn send(edge: &Edge, event: Event) {
    edge.reconciler.send(event);
}

/// `response` with `ETag: "<generation>"`, for `If-Match` on the next write.
fn with_etag(body: impl IntoResponse, generation: i64) -> axum::response::Response {
    let mut response = body.into_response();
    if let Ok(etag) = axum::http::HeaderValue::from_str(&format!("\"{generation}\"")) {
        response
            .headers_mut()
            .insert(axum::http::header::ETAG, etag);
    }
    response
}
