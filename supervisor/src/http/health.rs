//! `/healthz` (the supervisor is alive) and `/readyz` (every plugin has been started or has
//! failed to, and the store answers), with each plugin's state.

use super::Edge;
use crate::store::Store;
use crate::supervise::PluginState;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// How long one answer of the store serves `/readyz`.
pub const STORE_PROBE_TTL: Duration = Duration::from_millis(250);

/// Whether the store answers, as `/readyz` reports it. `/readyz` needs no token, so a client
/// polling it must not cost the store a query each time: an answer is reused for
/// [`STORE_PROBE_TTL`], and callers that arrive while a probe is out wait for that one. The
/// store sees at most one probe per TTL from this worker, however often `/readyz` is asked.
#[derive(Debug)]
pub struct StoreProbe {
    /// How long an answer is reused.
    ttl: Duration,
    /// The last answer (`Err` holds the reason) and when it came.
    last: Mutex<Option<(Instant, Result<(), String>)>>,
    /// Held by the one caller probing the store.
    probing: tokio::sync::Mutex<()>,
}

impl Default for StoreProbe {
    fn default() -> Self {
        StoreProbe::new(STORE_PROBE_TTL)
    }
}

impl StoreProbe {
    /// A probe whose answers are reused for `ttl`.
    pub fn new(ttl: Duration) -> StoreProbe {
        StoreProbe {
            ttl,
            last: Mutex::default(),
            probing: tokio::sync::Mutex::default(),
        }
    }

    fn fresh(&self) -> Option<Result<(), String>> {
        let last = self.last.lock().unwrap_or_else(|e| e.into_inner());
        last.as_ref()
            .filter(|(at, _)| at.elapsed() < self.ttl)
            .map(|(_, answer)| answer.clone())
    }

    /// Whether `store` answers, as it said at most the probe's TTL ago.
    pub async fn check(&self, store: &Store) -> Result<(), String> {
        if let Some(answer) = self.fresh() {
            return answer;
        }
        let _probing = self.probing.lock().await;
        // Another caller may have probed while this one waited.
        if let Some(answer) = self.fresh() {
            return answer;
        }
        let answer = store.ping().await.map_err(|e| format!("{e:#}"));
        *self.last.lock().unwrap_or_else(|e| e.into_inner()) =
            Some((Instant::now(), answer.clone()));
        answer
    }
}

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
    let store = match edge.store_probe.check(&edge.store).await {
        Ok(()) => "ok".to_string(),
        Err(e) => e,
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

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn an_answer_is_reused_for_its_ttl_only() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Store::open(None, dir.path()).await.expect("store");
        let (reused, fresh) = (
            StoreProbe::new(Duration::from_secs(3600)),
            StoreProbe::new(Duration::ZERO),
        );
        assert_eq!(reused.check(&store).await, Ok(()));
        assert_eq!(fresh.check(&store).await, Ok(()));
        store.close().await;
        // The store is gone: only the probe that asks it again says so.
        assert_eq!(reused.check(&store).await, Ok(()));
        let err = fresh
            .check(&store)
            .await
            .expect_err("a closed store does not answer");
        assert!(err.contains("the store does not answer"), "{err}");
    }
}
