//! `GET /metrics` through `prometheus-client`: request counts and latency histograms recorded
//! by the proxy, and each plugin's state, restarts, limits, resource usage, requests in flight
//! and IPC calls waiting for an answer, collected from the registry at scrape time (so the
//! request path carries no bookkeeping for those).
//!
//! The text is the OpenMetrics exposition, which Prometheus reads as its own text format.

use super::Edge;
use crate::supervise::{Instance, PluginState, Registry};
use axum::extract::State;
use axum::http::header::CONTENT_TYPE;
use axum::response::IntoResponse;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::metrics::TypedMetric;
// Plugin names and route patterns come from manifests, not clients: no flood resistance needed.
use foldhash::HashMap;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

/// Upper bounds of the latency histogram's buckets, in seconds.
const BUCKETS: [f64; 14] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// Every state a plugin can be in, as `plugd_plugin_state` labels them.
const STATES: [&str; 8] = [
    "disabled",
    "starting",
    "handshaking",
    "ready",
    "draining",
    "stopped",
    "backoff",
    "failed",
];

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    plugin: String,
    route: String,
    status: u16,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RouteLabels {
    plugin: String,
    route: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PluginLabels {
    plugin: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StateLabels {
    plugin: String,
    state: &'static str,
}

type Histograms = Family<RouteLabels, Histogram, fn() -> Histogram>;

/// The metrics registry: request metrics recorded as requests end, plugin metrics collected
/// at scrape time.
#[derive(Debug)]
pub struct Metrics {
    registry: prometheus_client::registry::Registry,
    requests: Family<RequestLabels, Counter>,
    durations: Histograms,
    /// Handles into the families by plugin and route, so recording a request looks up two
    /// borrowed strings and allocates nothing once a route has been seen.
    routes: RwLock<HashMap<String, HashMap<String, Arc<RouteHandles>>>>,
    /// Live admin streams open.
    streams: Gauge,
}

/// One route's histogram and its counter per status, shared with the families.
#[derive(Debug)]
struct RouteHandles {
    duration: Histogram,
    statuses: Mutex<Vec<(u16, Counter)>>,
}

impl Metrics {
    /// The registry, collecting plugin metrics from `plugins` at every scrape.
    pub fn new(plugins: Arc<Registry>) -> Metrics {
        let mut registry = prometheus_client::registry::Registry::default();
        let requests = Family::<RequestLabels, Counter>::default();
        let durations: Histograms = Family::new_with_constructor(|| Histogram::new(BUCKETS));
        registry.register(
            "plugd_http_requests",
            "HTTP requests by plugin, route and status",
            requests.clone(),
        );
        registry.register(
            "plugd_http_request_duration_seconds",
            "Time to answer an HTTP request, by plugin and route",
            durations.clone(),
        );
        let streams = Gauge::default();
        registry.register(
            "plugd_admin_streams",
            "Live streams open (GET /admin/stream)",
            streams.clone(),
        );
        registry.register_collector(Box::new(PluginCollector { plugins }));
        Metrics {
            registry,
            requests,
            durations,
            routes: RwLock::default(),
            streams,
        }
    }

    /// The gauge of live admin streams open.
    pub fn streams(&self) -> &Gauge {
        &self.streams
    }

    /// Counts one request.
    pub fn record(&self, plugin: &str, route: &str, status: u16, took: Duration) {
        let handles = {
            let routes = self.routes.read().unwrap_or_else(|e| e.into_inner());
            routes.get(plugin).and_then(|r| r.get(route)).cloned()
        };
        let handles = handles.unwrap_or_else(|| self.first_of_route(plugin, route));
        handles.duration.observe(took.as_secs_f64());
        let mut statuses = handles.statuses.lock().unwrap_or_else(|e| e.into_inner());
        match statuses.iter().find(|(s, _)| *s == status) {
            Some((_, counter)) => {
                counter.inc();
            }
            None => {
                let counter = self
                    .requests
                    .get_or_create(&RequestLabels {
                        plugin: plugin.to_owned(),
                        route: route.to_owned(),
                        status,
                    })
                    .clone();
                counter.inc();
                statuses.push((status, counter));
            }
        }
    }

    /// Registers a route's handles the first time it is seen.
    fn first_of_route(&self, plugin: &str, route: &str) -> Arc<RouteHandles> {
        let mut routes = self.routes.write().unwrap_or_else(|e| e.into_inner());
        routes
            .entry(plugin.to_owned())
            .or_default()
            .entry(route.to_owned())
            .or_insert_with(|| {
                let duration = self
                    .durations
                    .get_or_create(&RouteLabels {
                        plugin: plugin.to_owned(),
                        route: route.to_owned(),
                    })
                    .clone();
                Arc::new(RouteHandles {
                    duration,
                    statuses: Mutex::new(Vec::new()),
                })
            })
            .clone()
    }

    /// Renders every metric in the text exposition format.
    pub fn render(&self) -> String {
        let mut out = String::with_capacity(8192);
        if let Err(e) = prometheus_client::encoding::text::encode(&mut out, &self.registry) {
            tracing::error!("cannot render metrics: {e}");
        }
        out
    }
}

/// Each plugin's gauges and counters, read from the registry at scrape time.
#[derive(Debug)]
struct PluginCollector {
    plugins: Arc<Registry>,
}

/// Encodes one freshly built family under `name`.
fn emit<M: EncodeMetric + TypedMetric>(
    encoder: &mut DescriptorEncoder<'_>,
    name: &str,
    help: &str,
    family: &M,
) -> Result<(), std::fmt::Error> {
    let metric = encoder.encode_descriptor(name, help, None, family.metric_type())?;
    family.encode(metric)
}

/// A gauge family with one value per ready instance; `pick` says which.
fn ready_gauge(
    ready: &[(String, Arc<PluginState>)],
    pick: impl Fn(&Instance) -> Option<i64>,
) -> Family<PluginLabels, Gauge> {
    let family = Family::<PluginLabels, Gauge>::default();
    for (name, state) in ready {
        if let PluginState::Ready(instance) = &**state {
            if let Some(value) = pick(instance) {
                family
                    .get_or_create(&PluginLabels {
                        plugin: name.clone(),
                    })
                    .set(value);
            }
        }
    }
    family
}

fn int(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

impl Collector for PluginCollector {
    fn encode(&self, mut encoder: DescriptorEncoder<'_>) -> Result<(), std::fmt::Error> {
        let plugins = self.plugins.snapshot();
        let mut names: Vec<&String> = plugins.keys().collect();
        names.sort();

        let states = Family::<StateLabels, Gauge>::default();
        let restarts = Family::<PluginLabels, Counter>::default();
        for name in &names {
            let current = plugins[*name].state().name();
            for state in STATES {
                let labels = StateLabels {
                    plugin: (*name).clone(),
                    state,
                };
                states
                    .get_or_create(&labels)
                    .set(i64::from(state == current));
            }
            restarts
                .get_or_create(&PluginLabels {
                    plugin: (*name).clone(),
                })
                .inc_by(u64::from(plugins[*name].restarts()));
        }
        emit(
            &mut encoder,
            "plugd_plugin_state",
            "1 for the state each plugin is in",
            &states,
        )?;
        emit(
            &mut encoder,
            "plugd_plugin_restarts",
            "Restarts after an unplanned exit",
            &restarts,
        )?;

        let ready: Vec<(String, Arc<PluginState>)> = names
            .iter()
            .map(|n| ((*n).clone(), plugins[*n].state()))
            .filter(|(_, s)| matches!(**s, PluginState::Ready(_)))
            .collect();
        let cpu = Family::<PluginLabels, Counter<f64, AtomicU64>>::default();
        let cores = Family::<PluginLabels, Gauge<f64, AtomicU64>>::default();
        let cpu_limit = Family::<PluginLabels, Gauge<f64, AtomicU64>>::default();
        for (name, state) in &ready {
            if let PluginState::Ready(i) = &**state {
                let labels = PluginLabels {
                    plugin: name.clone(),
                };
                if let Some(usage) = i.usage_now() {
                    cpu.get_or_create(&labels).inc_by(usage.cpu_seconds);
                    cores.get_or_create(&labels).set(usage.cpu_cores);
                }
                if let Some(limit) = i.limits.cpu {
                    cpu_limit.get_or_create(&labels).set(limit);
                }
            }
        }
        type Pick = fn(&Instance) -> Option<i64>;
        let gauges: [(&str, &str, Pick); 11] = [
            (
                "plugd_plugin_memory_bytes",
                "Memory charged to the plugin",
                |i| i.usage_now().map(|u| int(u.memory_bytes)),
            ),
            (
                "plugd_plugin_memory_limit_bytes",
                "Hard memory limit",
                |i| Some(int(i.limits.memory)),
            ),
            (
                "plugd_plugin_memory_soft_limit_bytes",
                "Soft memory limit (a warning)",
                |i| Some(int(i.limits.memory_soft)),
            ),
            ("plugd_plugin_tasks", "Processes plus threads", |i| {
                i.usage_now().map(|u| int(u.tasks))
            }),
            ("plugd_plugin_tasks_limit", "Task limit", |i| {
                Some(i64::from(i.limits.tasks))
            }),
            ("plugd_plugin_open_files", "Open file descriptors", |i| {
                i.usage_now().map(|u| int(u.open_files))
            }),
            ("plugd_plugin_open_files_limit", "Open file limit", |i| {
                Some(int(i.limits.open_files))
            }),
            (
                "plugd_plugin_requests_in_flight",
                "HTTP requests in flight to the plugin",
                |i| {
                    let used = i.limits.max_in_flight as usize - i.in_flight.available_permits();
                    Some(int(used as u64))
                },
            ),
            (
                "plugd_plugin_requests_in_flight_limit",
                "Requests allowed in flight at once",
                |i| Some(i64::from(i.limits.max_in_flight)),
            ),
            (
                "plugd_plugin_ipc_calls_pending",
                "Calls to the plugin waiting for an answer",
                |i| Some(int(i.calls_in_flight() as u64)),
            ),
            (
                "plugd_plugin_lanes_open",
                "Lanes open to the plugin: extra connections, one per HTTP thread beyond the first",
                |i| Some(int(i.lanes.open() as u64)),
            ),
        ];
        for (name, help, pick) in gauges {
            emit(&mut encoder, name, help, &ready_gauge(&ready, pick))?;
        }
        emit(
            &mut encoder,
            "plugd_plugin_cpu_seconds",
            "CPU time used by the plugin's main process",
            &cpu,
        )?;
        emit(
            &mut encoder,
            "plugd_plugin_cpu_cores",
            "CPU use over the last sample interval, in cores",
            &cores,
        )?;
        emit(
            &mut encoder,
            "plugd_plugin_cpu_limit_cores",
            "CPU quota in cores",
            &cpu_limit,
        )?;
        Ok(())
    }
}

/// `GET /metrics`.
pub async fn metrics(State(edge): State<Arc<Edge>>) -> impl IntoResponse {
    (
        [(CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")],
        edge.metrics.render(),
    )
}
