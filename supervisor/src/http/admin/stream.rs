//! `GET /admin/stream`: the live feed as Server-Sent Events: plugin state changes on every
//! worker, audit entries, this worker's plugins' log lines; filtered by plugin and kind.
//!
//! A stream never holds plugd back: it reads from a bounded broadcast channel (see
//! [`crate::feed`]), and one that falls behind gets a `lagged` event saying how many events it
//! missed. At most [`MAX_STREAMS`] are open per worker; streams end when plugd shuts down.

use super::doc::{BadInput, Denied};
use crate::http::error::{ApiError, Query};
use crate::http::Edge;
use crate::supervise::cluster;
use axum::extract::State;
use axum::http::header::HeaderValue;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use plugd_api::{StreamEvent, StreamKind, StreamQuery};
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::broadcast::error::RecvError;

/// Live streams open at once on one worker; more get 503.
pub const MAX_STREAMS: usize = 64;
/// Time between keep-alive comments on a quiet stream.
pub const KEEP_ALIVE: Duration = Duration::from_secs(15);

/// What a stream's client asked for.
#[derive(Debug)]
struct Filter {
    plugin: Option<String>,
    kinds: Option<Vec<StreamKind>>,
}

impl Filter {
    fn parse(q: StreamQuery) -> Result<Filter, ApiError> {
        let kinds = match q.kinds.as_deref() {
            None | Some("") => None,
            Some(list) => Some(
                list.split(',')
                    .map(|k| {
                        StreamKind::parse(k.trim()).ok_or_else(|| {
                            ApiError::bad_request(
                                "invalid kinds",
                                format!(
                                    "unknown kind {k:?}: use state, audit or log, comma-separated"
                                ),
                            )
                        })
                    })
                    .collect::<Result<Vec<_>, _>>()?,
            ),
        };
        Ok(Filter {
            plugin: q.plugin,
            kinds,
        })
    }

    fn wants(&self, event: &StreamEvent) -> bool {
        let kind = event.kind();
        if matches!(kind, StreamKind::Hello | StreamKind::Lagged) {
            return true;
        }
        self.kinds.as_ref().is_none_or(|k| k.contains(&kind))
            && self
                .plugin
                .as_deref()
                .is_none_or(|p| event.plugin() == Some(p))
    }
}

/// One open stream: its slot among [`MAX_STREAMS`], counted in `plugd_admin_streams` while
/// it lives.
#[derive(Debug)]
struct Open {
    _permit: tokio::sync::OwnedSemaphorePermit,
    gauge: prometheus_client::metrics::gauge::Gauge,
}

impl Open {
    fn new(
        permit: tokio::sync::OwnedSemaphorePermit,
        gauge: prometheus_client::metrics::gauge::Gauge,
    ) -> Open {
        gauge.inc();
        Open {
            _permit: permit,
            gauge,
        }
    }
}

impl Drop for Open {
    fn drop(&mut self) {
        self.gauge.dec();
    }
}

fn sse(event: &StreamEvent) -> Result<Event, Infallible> {
    let data = serde_json::to_string(event).unwrap_or_default();
    Ok(Event::default().event(event.kind().name()).data(data))
}

/// Server-Sent Events: `hello` first, then `state`, `audit` and `log` events as they happen,
/// and `lagged` when this client fell behind. Each event's `data` is one JSON object.
#[utoipa::path(
    get, path = "/stream", operation_id = "stream", tag = "cluster",
    params(StreamQuery),
    responses(
        (status = 200, description = "An endless stream of events (`event:` is the kind)",
            content_type = "text/event-stream", body = StreamEvent),
        BadInput, Denied,
    ),
)]
pub async fn stream(
    State(edge): State<Arc<Edge>>,
    Query(q): Query<StreamQuery>,
) -> Result<Response, ApiError> {
    let filter = Filter::parse(q)?;
    let permit = edge.streams.clone().try_acquire_owned().map_err(|_| {
        ApiError::unavailable(
            "too many streams",
            format!("{MAX_STREAMS} live streams are open on this worker; close one and retry"),
        )
    })?;
    // Subscribed first: this worker's events from here on are queued for the stream. Then the
    // store's baseline: audit entries and other workers' state changes after it reach the
    // stream, however late the store's follower wakes. Only then is the stream counted as open
    // and `hello` sent, so everything after `hello` is delivered.
    let rx = edge.feed.subscribe();
    if let Some(now) = cluster::baseline(&edge.store, edge.feed.worker()).await {
        edge.feed.start_from(now);
    }
    let permit = Open::new(permit, edge.metrics.streams().clone());
    let hello = StreamEvent::Hello {
        worker: edge.feed.worker().to_owned(),
    };
    let closed = Box::pin(edge.feed.closed());
    let events = futures_util::stream::unfold(
        (rx, Some(hello), closed, filter, permit),
        |(mut rx, mut hello, mut closed, filter, permit)| async move {
            if let Some(hello) = hello.take() {
                let event = sse(&hello);
                return Some((event, (rx, None, closed, filter, permit)));
            }
            loop {
                let next = tokio::select! {
                    next = rx.recv() => next,
                    _ = &mut closed => return None,
                };
                let event = match next {
                    Ok(event) if filter.wants(&event) => sse(&event),
                    Ok(_) => continue,
                    Err(RecvError::Lagged(missed)) => sse(&StreamEvent::Lagged { missed }),
                    Err(RecvError::Closed) => return None,
                };
                return Some((event, (rx, hello, closed, filter, permit)));
            }
        },
    );
    let mut response = Sse::new(events)
        .keep_alive(KeepAlive::new().interval(KEEP_ALIVE))
        .into_response();
    // Proxies in front of plugd must pass each event on at once.
    response
        .headers_mut()
        .insert("x-accel-buffering", HeaderValue::from_static("no"));
    Ok(response)
}
