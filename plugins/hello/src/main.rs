//! Example plugin `hello`: path parameters, a query parameter, JSON out, and shared state.
//!
//! Routes (mounted at `/plugins/hello`):
//! - `GET /hello` — plain text greeting (the benchmark's route).
//! - `GET /hello/{name}?greeting=hi` — greets `name`, counting visits per name.
//! - `GET /stats` — JSON with the visit counts.

use plugd_runtime::{Json, Plugin, Request};
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

#[derive(Default)]
struct Visits(Mutex<BTreeMap<String, u64>>);

// A plugin whose handlers only compute a little is fastest on one thread: reading a request,
// running its handler and writing the answer then never wake another thread. Plugins with heavy
// handlers keep the default multi-threaded runtime (see the notes plugin).
#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), plugd_runtime::Error> {
    Plugin::new("hello", env!("CARGO_PKG_VERSION"))
        .with_state(Visits::default())
        .get("/hello", |_req: Request, _| async { "hello, world\n" })
        .get(
            "/hello/{name}",
            |req: Request, visits: Arc<Visits>| async move {
                let name = req.param("name").unwrap_or("stranger").to_owned();
                let greeting = req.query("greeting").unwrap_or_else(|| "hello".into());
                let mut counts = visits.0.lock().unwrap_or_else(|e| e.into_inner());
                let n = counts.entry(name.clone()).or_default();
                *n += 1;
                format!("{greeting}, {name}! (visit {n})\n")
            },
        )
        .get("/stats", |_req: Request, visits: Arc<Visits>| async move {
            let counts = visits.0.lock().unwrap_or_else(|e| e.into_inner()).clone();
            Json(serde_json::json!({ "visits": counts }))
        })
        .run()
        .await
}
