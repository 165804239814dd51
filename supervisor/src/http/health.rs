//! `/healthz` (the supervisor is alive) and `/readyz` (every plugin has been started or has
//! failed to, and the store answers), with each plugin's state.

use super::Edge;
use crate::supervise::PluginState;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use std::sync::Arc;

/// `GET /healthz`: the supervisor is alive.
pub async fn healthz() -> &'static str {
    "ok\n"
}

/// `GET /readyz`: 200 once every plugin has been started or has failed to, with each plugin's
/// state; 503 while plugins are still starting.
pub async fn readyz(State(edge): State<Arc<Edge>>) -> Response {
    let mut plugins = serde_json::Map::new();
    for (name, slot) in edge.registry.plugins().iter() {
        let state = slot.state();
        let mut entry = serde_json::json!({ "state": state.name(), "restarts": slot.restarts() });
        if let Some(reason) = state.reason() {
            entry["reason"] = reason.into();
        }
        if let PluginState::Ready(instance) = &*state {
            entry["pid"] = instance.pid.into();
            entry["limits"] = serde_json::to_value(instance.limits.to_api()).unwrap_or_default();
            let usage = instance
                .usage
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .clone();
            entry["usage"] = serde_json::to_value(usage).unwrap_or_default();
            entry["in_flight"] = (instance.limits.max_in_flight as usize
                - instance.in_flight.available_permits())
            .into();
        }
        if let Some(standby) = slot.standby() {
            entry["standby"] = serde_json::to_value(super::admin::plugins::standby_view(&standby))
                .unwrap_or_default();
        }
        plugins.insert(name.clone(), entry);
    }
    let store = match edge.store.ping().await {
        Ok(()) => "ok".to_string(),
        Err(e) => format!("{e:#}"),
    };
    let ready = edge.registry.is_ready() && store == "ok";
    let status = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (
        status,
        Json(serde_json::json!({ "ready": ready, "store": store, "plugins": plugins })),
    )
        .into_response()
}
