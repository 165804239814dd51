//! The HTTP edge: everything plugd answers over HTTP, in the order a request meets it.
//!
//! [`router`] assembles the routes under tower-http layers (request ids set or propagated,
//! with the `access_log` setting an access-log line per request under the `plugd::access`
//! log target, a timeout on admin
//! routes); [`App`] is what the server runs: it sends plugin routes straight to the proxy
//! (doing what the request-id layers do itself) and the rest through the router. [`proxy`] forwards `/plugins/{name}/…` to plugins; [`hooks`] fires hooks for host
//! applications; [`admin`] is the admin API, one file per resource; [`health`] and [`metrics`]
//! report on plugd itself; [`ui`] is the dashboard, a page that drives the admin API;
//! [`auth`] decides who may do what; every failure is an
//! [`error::ApiError`]. [`serve`] is the accept loop, with its bounds on connections and slow
//! clients.

pub mod admin;
pub mod auth;
pub mod error;
mod head_timer;
pub mod health;
pub mod hooks;
pub mod metrics;
pub mod proxy;
pub mod serve;
pub mod stream;
pub mod ui;

use crate::settings::AdminToken;
use crate::store::Store;
use crate::supervise::cluster::Worker;
use crate::supervise::{Handle, Registry};
use axum::http::{HeaderValue, Request, StatusCode};
use axum::routing::{any, get, post};
use axum::Router;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tower_http::request_id::{
    MakeRequestId, PropagateRequestIdLayer, RequestId, SetRequestIdLayer,
};
use tower_http::timeout::TimeoutLayer;
use tower_http::trace::TraceLayer;

/// The longest an admin request may take: above the longest `?wait=` (60 s) and the upload of
/// a bundle at its size limit.
pub const ADMIN_TIMEOUT: Duration = Duration::from_secs(90);

/// What the HTTP edge needs of the rest of plugd.
#[derive(Debug)]
pub struct Edge {
    /// The plugins, as the reconcile loop publishes them.
    pub registry: Arc<Registry>,
    /// The state store.
    pub store: Store,
    /// Whether the store answers, as `/readyz` reports it.
    pub store_probe: health::StoreProbe,
    /// Tokens for the admin API and for plugin routes that require a permission.
    pub admin_tokens: Vec<AdminToken>,
    /// The reconcile loop, which admin actions are sent to.
    pub reconciler: Handle,
    /// Where plugins live (installs unpack here).
    pub plugins_dir: PathBuf,
    /// Request counts and latencies, and the plugins' gauges, for `/metrics`.
    pub metrics: metrics::Metrics,
    /// This worker's identity in the cluster.
    pub worker: Worker,
    /// Makes request ids for requests that come without one.
    pub request_ids: RequestIds,
    /// The live feed behind `GET /admin/stream`.
    pub feed: Arc<crate::feed::Feed>,
    /// Installed versions kept per plugin.
    pub keep_versions: u32,
    /// When canaries are rolled back automatically (shown by `GET …/canary`).
    pub canary_policy: crate::supervise::canary::CanaryPolicy,
    /// Open live streams, at most [`admin::stream::MAX_STREAMS`].
    pub streams: Arc<tokio::sync::Semaphore>,
}

/// The longest request id plugd makes: an 8-digit prefix, a dash and up to 16 hex digits.
const ID_LEN: usize = 32;

/// Request ids: a random prefix per process and a counter, so ids are unique across workers
/// and cheap to make.
#[derive(Debug, Clone)]
pub struct RequestIds {
    prefix: Arc<str>,
    next: Arc<AtomicU64>,
}

impl Default for RequestIds {
    fn default() -> Self {
        RequestIds {
            prefix: format!("{:08x}", rand::random::<u32>()).into(),
            next: Arc::new(AtomicU64::new(1)),
        }
    }
}

impl RequestIds {
    /// A fresh id.
    pub fn next_id(&self) -> String {
        let mut buf = [0u8; ID_LEN];
        let len = self.write_next(&mut buf);
        String::from_utf8_lossy(&buf[..len]).into_owned()
    }

    /// Writes `{prefix}-{n:x}` for the next `n` into `buf` and returns its length; without the
    /// formatting machinery or an allocation (once per request).
    fn write_next(&self, buf: &mut [u8; ID_LEN]) -> usize {
        let n = self.next.fetch_add(1, Ordering::Relaxed);
        let prefix = self.prefix.as_bytes();
        let prefix = &prefix[..prefix.len().min(ID_LEN - 17)];
        buf[..prefix.len()].copy_from_slice(prefix);
        buf[prefix.len()] = b'-';
        let digits = (64 - n.leading_zeros()).div_ceil(4).max(1) as usize;
        let start = prefix.len() + 1;
        for i in 0..digits {
            let nibble = ((n >> (4 * (digits - 1 - i))) & 0xf) as usize;
            buf[start + i] = b"0123456789abcdef"[nibble];
        }
        start + digits
    }

    /// A fresh id as a header value.
    pub fn next_value(&self) -> HeaderValue {
        let mut buf = [0u8; ID_LEN];
        let len = self.write_next(&mut buf);
        // A hex prefix, a dash and hex digits: always a valid value.
        HeaderValue::from_bytes(&buf[..len]).unwrap_or_else(|_| HeaderValue::from_static("-"))
    }
}

impl MakeRequestId for RequestIds {
    fn make_request_id<B>(&mut self, _request: &Request<B>) -> Option<RequestId> {
        Some(RequestId::new(self.next_value()))
    }
}

/// What the server runs for each request: `/plugins/…` goes straight to [`proxy`], which is
/// most of the traffic, without the router's matching and layers; everything else goes
/// through [`router`]. (With `access_log` on, every request goes through the router, whose
/// layer writes the log line.)
#[derive(Clone)]
pub struct App {
    router: hyper_util::service::TowerToHyperService<Router>,
    /// Set when plugin routes take the short way.
    plugins: Option<Arc<Edge>>,
}

impl std::fmt::Debug for App {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("App")
            .field("plugins_direct", &self.plugins.is_some())
            .finish_non_exhaustive()
    }
}

impl App {
    /// Every route plugd serves; with `access_log`, one log line per request.
    pub fn new(edge: Arc<Edge>, access_log: bool) -> App {
        App {
            router: hyper_util::service::TowerToHyperService::new(router(edge.clone(), access_log)),
            plugins: (!access_log).then_some(edge),
        }
    }
}

type RouterFuture = <hyper_util::service::TowerToHyperService<Router> as hyper::service::Service<
    Request<hyper::body::Incoming>,
>>::Future;

impl hyper::service::Service<Request<hyper::body::Incoming>> for App {
    type Response = axum::response::Response;
    type Error = std::convert::Infallible;
    type Future = futures_util::future::Either<
        futures_util::future::BoxFuture<'static, Result<Self::Response, Self::Error>>,
        RouterFuture,
    >;

    fn call(&self, request: Request<hyper::body::Incoming>) -> Self::Future {
        match &self.plugins {
            Some(edge) if request.uri().path().starts_with("/plugins/") => {
                let edge = edge.clone();
                let request = request.map(axum::body::Body::new);
                futures_util::future::Either::Left(Box::pin(async move {
                    Ok(proxy::with_request_id(edge, request).await)
                }))
            }
            _ => futures_util::future::Either::Right(self.router.call(request)),
        }
    }
}

/// Every route plugd serves; with `access_log`, one log line per request.
pub fn router(edge: Arc<Edge>, access_log: bool) -> Router {
    let (admin, _) = admin::router(edge.clone());
    let admin = admin.layer(TimeoutLayer::with_status_code(
        StatusCode::SERVICE_UNAVAILABLE,
        ADMIN_TIMEOUT,
    ));
    let trace = TraceLayer::new_for_http()
        .make_span_with(|request: &Request<axum::body::Body>| {
            let id = request
                .headers()
                .get(proxy::X_REQUEST_ID)
                .and_then(|v| v.to_str().ok())
                .unwrap_or_default();
            tracing::info_span!(
                target: "plugd::access",
                "request",
                method = %request.method(),
                path = %request.uri().path(),
                id,
            )
        })
        .on_request(())
        .on_response(
            |response: &axum::response::Response, latency: Duration, _: &tracing::Span| {
                tracing::info!(
                    target: "plugd::access",
                    status = response.status().as_u16(),
                    latency_us = latency.as_micros() as u64,
                );
            },
        )
        .on_failure(());
    let routes = Router::new()
        .route("/plugins/{*rest}", any(proxy::proxy))
        .route("/plugins/", any(proxy::proxy))
        .route("/healthz", get(health::healthz))
        .route("/readyz", get(health::readyz))
        .route("/metrics", get(metrics::metrics))
        .route("/hooks/{hook}", post(hooks::post_hook))
        .nest("/admin", admin)
        .merge(ui::router())
        .with_state(edge.clone())
        .layer(PropagateRequestIdLayer::x_request_id());
    let routes = if access_log {
        routes.layer(trace)
    } else {
        routes
    };
    routes.layer(SetRequestIdLayer::x_request_id(edge.request_ids.clone()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_request_id_is_the_prefix_a_dash_and_the_counter_in_hex() {
        for n in [0u64, 1, 0xf, 0x10, 0xabc, 0x1234_5678_9abc, u64::MAX] {
            let ids = RequestIds {
                prefix: "0badcafe".into(),
                next: Arc::new(AtomicU64::new(n)),
            };
            assert_eq!(ids.next_id(), format!("0badcafe-{n:x}"));
        }
    }
}
