//! The admin REST API under `/admin`: JSON in and out, bearer tokens with roles (see
//! [`super::auth`]), every change written to the audit log with the token's name. One file per
//! resource: [`plugins`] (state and actions), [`bundles`] (install, uninstall), [`events`] (the
//! audit log), [`workers`], [`permissions`] and [`stats`].
//!
//! Handlers write the desired state to the store and send the reconcile loop an event; they
//! never touch a plugin's process or visible state.

pub mod bundles;
pub mod events;
pub mod permissions;
pub mod plugins;
pub mod stats;
pub mod workers;

use super::auth::authenticate;
use super::error::ApiError;
use super::Edge;
use crate::supervise::Event;
use axum::extract::DefaultBodyLimit;
use axum::http::StatusCode;
use axum::middleware;
use axum::routing::{get, post};
use axum::Router;
use std::sync::Arc;

/// The `/admin` routes.
pub fn router(edge: Arc<Edge>) -> Router<Arc<Edge>> {
    Router::new()
        .route("/plugins", get(plugins::list))
        .route(
            "/plugins/install",
            post(bundles::install).layer(DefaultBodyLimit::max(bundles::MAX_BUNDLE)),
        )
        .route(
            "/plugins/{name}",
            get(plugins::get_one).delete(bundles::uninstall),
        )
        .route("/plugins/{name}/enable", post(plugins::enable))
        .route("/plugins/{name}/disable", post(plugins::disable))
        .route("/plugins/{name}/reload", post(plugins::reload))
        .route("/plugins/{name}/restart", post(plugins::restart))
        .route("/plugins/{name}/logs", get(plugins::logs))
        .route("/events", get(events::list))
        .route("/permissions", get(permissions::list))
        .route("/workers", get(workers::list))
        .route("/stats", get(stats::get))
        .fallback(|| async {
            ApiError::new(StatusCode::NOT_FOUND, "not found", "no such admin endpoint")
        })
        .layer(middleware::from_fn_with_state(edge, authenticate))
}

/// 503 for a store that failed, logged with its cause.
fn store_error(e: anyhow::Error) -> ApiError {
    tracing::error!("admin: {e:#}");
    ApiError::new(
        StatusCode::SERVICE_UNAVAILABLE,
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

/// Hands an event to the reconcile loop.
fn send(edge: &Edge, event: Event) {
    edge.reconciler.send(event);
}
