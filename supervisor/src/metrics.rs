//! `GET /metrics` in the Prometheus text format: each plugin's state, restarts, limits, resource
//! usage, requests in flight and IPC calls waiting for an answer. Built from the plugin slots at
//! scrape time, so the request path carries no metrics bookkeeping for these.

use crate::plugin::PluginState;
use crate::proxy::AppState;
use axum::extract::State;
use axum::http::header::CONTENT_TYPE;
use axum::response::IntoResponse;
use std::collections::HashMap;
use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

/// Upper bounds of the latency histogram's buckets, in seconds.
const BUCKETS: [f64; 14] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// Requests by plugin, route and status, with a latency histogram per plugin and route.
/// Recording takes a shared lock and a few atomics; the first request of a new route takes the
/// write lock once.
#[derive(Debug, Default)]
pub struct RequestMetrics {
    plugins: RwLock<HashMap<String, HashMap<String, Arc<RouteStats>>>>,
}

#[derive(Debug, Default)]
struct RouteStats {
    statuses: Mutex<Vec<(u16, u64)>>,
    buckets: [AtomicU64; BUCKETS.len()],
    count: AtomicU64,
    sum_us: AtomicU64,
}

impl RequestMetrics {
    /// Counts one request.
    pub fn record(&self, plugin: &str, route: &str, status: u16, took: Duration) {
        let stats = {
            let plugins = self.plugins.read().unwrap_or_else(|e| e.into_inner());
            plugins.get(plugin).and_then(|r| r.get(route)).cloned()
        };
        let stats = stats.unwrap_or_else(|| {
            let mut plugins = self.plugins.write().unwrap_or_else(|e| e.into_inner());
            plugins
                .entry(plugin.to_owned())
                .or_default()
                .entry(route.to_owned())
                .or_default()
                .clone()
        });
        {
            let mut statuses = stats.statuses.lock().unwrap_or_else(|e| e.into_inner());
            match statuses.iter_mut().find(|(s, _)| *s == status) {
                Some((_, n)) => *n += 1,
                None => statuses.push((status, 1)),
            }
        }
        let secs = took.as_secs_f64();
        if let Some(i) = BUCKETS.iter().position(|b| secs <= *b) {
            stats.buckets[i].fetch_add(1, Ordering::Relaxed);
        }
        stats.count.fetch_add(1, Ordering::Relaxed);
        stats
            .sum_us
            .fetch_add(took.as_micros() as u64, Ordering::Relaxed);
    }

    fn render(&self, out: &mut String) {
        let plugins = self.plugins.read().unwrap_or_else(|e| e.into_inner());
        let mut rows: Vec<(&String, &String, &Arc<RouteStats>)> = plugins
            .iter()
            .flat_map(|(p, routes)| routes.iter().map(move |(r, s)| (p, r, s)))
            .collect();
        rows.sort_by(|a, b| (a.0, a.1).cmp(&(b.0, b.1)));
        let mut f = Family::new(
            out,
            "plugd_http_requests_total",
            "counter",
            "HTTP requests by plugin, route and status.",
        );
        for (plugin, route, stats) in &rows {
            let mut statuses = stats
                .statuses
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .clone();
            statuses.sort();
            for (status, n) in statuses {
                let status = status.to_string();
                f.sample(
                    "plugd_http_requests_total",
                    &[("plugin", plugin), ("route", route), ("status", &status)],
                    n as f64,
                );
            }
        }
        let name = "plugd_http_request_duration_seconds";
        let _ = writeln!(out, "# HELP {name} Time to answer an HTTP request, by plugin and route.\n# TYPE {name} histogram");
        for (plugin, route, stats) in &rows {
            let labels = format!("plugin=\"{}\",route=\"{}\"", escape(plugin), escape(route));
            let mut cumulative = 0;
            for (i, bound) in BUCKETS.iter().enumerate() {
                cumulative += stats.buckets[i].load(Ordering::Relaxed);
                let _ = writeln!(out, "{name}_bucket{{{labels},le=\"{bound}\"}} {cumulative}");
            }
            let count = stats.count.load(Ordering::Relaxed);
            let _ = writeln!(out, "{name}_bucket{{{labels},le=\"+Inf\"}} {count}");
            let sum = stats.sum_us.load(Ordering::Relaxed) as f64 / 1e6;
            let _ = writeln!(out, "{name}_sum{{{labels}}} {sum}");
            let _ = writeln!(out, "{name}_count{{{labels}}} {count}");
        }
    }
}

const STATES: [&str; 7] = [
    "starting",
    "handshaking",
    "ready",
    "draining",
    "stopped",
    "backoff",
    "failed",
];

/// One metric family being written.
struct Family<'a> {
    out: &'a mut String,
}

impl<'a> Family<'a> {
    fn new(out: &'a mut String, name: &str, kind: &str, help: &str) -> Family<'a> {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
        Family { out }
    }

    fn sample(&mut self, name: &str, labels: &[(&str, &str)], value: f64) {
        let labels: Vec<String> = labels
            .iter()
            .map(|(k, v)| format!("{k}=\"{}\"", escape(v)))
            .collect();
        let _ = writeln!(self.out, "{name}{{{}}} {value}", labels.join(","));
    }
}

fn escape(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// Renders every metric.
pub fn render(app: &AppState) -> String {
    let plugins = app.plugins.load();
    let mut names: Vec<&String> = plugins.keys().collect();
    names.sort();
    let mut out = String::with_capacity(4096);
    app.metrics.render(&mut out);

    let mut f = Family::new(
        &mut out,
        "plugd_plugin_state",
        "gauge",
        "1 for the state each plugin is in.",
    );
    for name in &names {
        let current = plugins[*name].state().name();
        for state in STATES {
            let value = if state == current { 1.0 } else { 0.0 };
            f.sample(
                "plugd_plugin_state",
                &[("plugin", name), ("state", state)],
                value,
            );
        }
    }
    let mut f = Family::new(
        &mut out,
        "plugd_plugin_restarts_total",
        "counter",
        "Restarts after an unplanned exit.",
    );
    for name in &names {
        let restarts = f64::from(plugins[*name].restarts());
        f.sample("plugd_plugin_restarts_total", &[("plugin", name)], restarts);
    }

    let ready: Vec<(&String, Arc<PluginState>)> = names
        .iter()
        .map(|n| (*n, plugins[*n].state()))
        .filter(|(_, s)| matches!(**s, PluginState::Ready(_)))
        .collect();
    type Pick = fn(&crate::plugin::Instance) -> Option<f64>;
    let gauges: [(&str, &str, Pick); 12] = [
        (
            "plugd_plugin_memory_bytes",
            "Memory charged to the plugin.",
            |i| i.usage_now().map(|u| u.memory_bytes as f64),
        ),
        (
            "plugd_plugin_memory_limit_bytes",
            "Hard memory limit.",
            |i| Some(i.limits.memory as f64),
        ),
        (
            "plugd_plugin_memory_soft_limit_bytes",
            "Soft memory limit (a warning).",
            |i| Some(i.limits.memory_soft as f64),
        ),
        (
            "plugd_plugin_cpu_seconds",
            "CPU time used by the plugin's main process.",
            |i| i.usage_now().map(|u| u.cpu_seconds),
        ),
        (
            "plugd_plugin_cpu_cores",
            "CPU use over the last sample interval, in cores.",
            |i| i.usage_now().map(|u| u.cpu_cores),
        ),
        ("plugd_plugin_cpu_limit_cores", "CPU quota in cores.", |i| {
            i.limits.cpu
        }),
        ("plugd_plugin_tasks", "Processes plus threads.", |i| {
            i.usage_now().map(|u| u.tasks as f64)
        }),
        ("plugd_plugin_tasks_limit", "Task limit.", |i| {
            Some(f64::from(i.limits.tasks))
        }),
        ("plugd_plugin_open_files", "Open file descriptors.", |i| {
            i.usage_now().map(|u| u.open_files as f64)
        }),
        ("plugd_plugin_open_files_limit", "Open file limit.", |i| {
            Some(i.limits.open_files as f64)
        }),
        (
            "plugd_plugin_requests_in_flight",
            "HTTP requests in flight to the plugin.",
            |i| Some((i.limits.max_in_flight as usize - i.in_flight.available_permits()) as f64),
        ),
        (
            "plugd_plugin_ipc_calls_pending",
            "Calls to the plugin waiting for an answer.",
            |i| Some(i.conn.in_flight() as f64),
        ),
    ];
    for (metric, help, pick) in gauges {
        let mut f = Family::new(&mut out, metric, "gauge", help);
        for (name, state) in &ready {
            if let PluginState::Ready(instance) = &**state {
                if let Some(value) = pick(instance) {
                    f.sample(metric, &[("plugin", name)], value);
                }
            }
        }
    }
    let mut f = Family::new(
        &mut out,
        "plugd_plugin_requests_in_flight_limit",
        "gauge",
        "Requests allowed in flight at once.",
    );
    for (name, state) in &ready {
        if let PluginState::Ready(instance) = &**state {
            let limit = f64::from(instance.limits.max_in_flight);
            f.sample(
                "plugd_plugin_requests_in_flight_limit",
                &[("plugin", name)],
                limit,
            );
        }
    }
    out
}

/// `GET /metrics`.
pub async fn metrics(State(app): State<Arc<AppState>>) -> impl IntoResponse {
    (
        [(CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")],
        render(&app),
    )
}
