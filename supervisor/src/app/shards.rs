//! The threads beside the main one that take HTTP connections (`http_threads` − 1 of them).
//!
//! Each runs a single-threaded runtime of its own: its listening socket (the same address,
//! `SO_REUSEPORT`, so the kernel spreads connections across the threads), the connections it
//! accepted, and its lane to every plugin instance that offers lanes. A request is taken, sent
//! to the plugin and answered on one thread; the threads share only what every request reads
//! (the registry, the metrics, the connection cap).

use crate::ipc::lane;
use crate::ipc::LaneRuntimes;
use anyhow::Context;
use tokio::runtime::Handle;
use tokio::sync::oneshot;

/// The running HTTP threads beyond the main one.
#[derive(Debug, Default)]
pub(super) struct Shards {
    shards: Vec<Shard>,
}

#[derive(Debug)]
struct Shard {
    handle: Handle,
    stop: oneshot::Sender<()>,
    thread: std::thread::JoinHandle<()>,
}

impl Shards {
    /// Starts `count` threads, lanes 1 to `count`, each running its runtime until stopped.
    pub(super) fn start(count: usize) -> anyhow::Result<Shards> {
        let mut shards = Vec::with_capacity(count);
        for lane in 1..=count {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .context("cannot start an HTTP thread's runtime")?;
            let handle = runtime.handle().clone();
            let (stop, stopped) = oneshot::channel::<()>();
            let thread = std::thread::Builder::new()
                .name(format!("plugd-http-{lane}"))
                .spawn(move || {
                    lane::set_current(lane);
                    runtime.block_on(async {
                        let _ = stopped.await;
                    });
                    // Dropping the runtime here ends its tasks: the lanes it drove close.
                })
                .context("cannot start an HTTP thread")?;
            shards.push(Shard {
                handle,
                stop,
                thread,
            });
        }
        Ok(Shards { shards })
    }

    /// The runtimes, for the plugin instances' lanes.
    pub(super) fn lane_runtimes(&self) -> LaneRuntimes {
        LaneRuntimes::new(self.shards.iter().map(|s| s.handle.clone()).collect())
    }

    /// The runtimes' handles, in lane order from lane 1.
    pub(super) fn handles(&self) -> impl Iterator<Item = &Handle> {
        self.shards.iter().map(|s| &s.handle)
    }

    /// Stops every thread and waits for it to end (its runtime drops its tasks).
    pub(super) async fn stop(self) {
        let threads: Vec<_> = self
            .shards
            .into_iter()
            .map(|s| {
                let _ = s.stop.send(());
                s.thread
            })
            .collect();
        let _ = tokio::task::spawn_blocking(move || {
            for thread in threads {
                let _ = thread.join();
            }
        })
        .await;
    }
}
