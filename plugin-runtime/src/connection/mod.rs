//! The connection loop: handshake, then dispatch every incoming message until shutdown.
//!
//! One reader (this loop) decodes frames and runs each request's handler. A handler that
//! finishes on its first poll (most do: they compute an answer without waiting) is answered
//! right there, with no task spawned and, on a multi-threaded runtime, no other thread woken.
//! One that waits goes on in the reader's own set (see [`local`]); handlers that proved heavy
//! on a multi-threaded runtime (see [`weight`]) and streaming routes become a task each. All
//! are tracked by id, so a `cancel` can abort one and a `shutdown` can wait for all of them.
//! HTTP requests are started in [`http`], hook and service calls in [`calls`]. Answers go
//! through the connection's [`Outbox`]: while the reader works through frames that arrived
//! together, and the handlers they woke, it keeps the outbox corked, so their answers leave in
//! one write.

use crate::answer::result_frame;
use crate::kv::Caller;
use crate::plugin::{
    Callback, Error, HookRoute, Plugin, Route, RouteHandler, ServiceHandler, SettingsCallback,
};
use crate::settings::Settings;
use crate::stream::Streams;
use bytes::Bytes;
use futures_util::future::{AbortHandle, Abortable};
use futures_util::stream::FuturesUnordered;
use futures_util::{FutureExt, StreamExt};
use lane::{dispatch_on_lane, serve_lane, Opening, MAX_LANES};
use local::Local;
use plugd_protocol::envelope::{encode_error, encode_request, encode_response};
use plugd_protocol::message::control::{Cancel, Empty, Ping, Shutdown};
use plugd_protocol::message::handshake::{Handshake, Hello, RouteDecl};
use plugd_protocol::message::hook::HookCall;
use plugd_protocol::message::http::Http;
use plugd_protocol::message::service::ServiceCall;
use plugd_protocol::message::settings::{Settings as SettingsMethod, SettingsParams};
use plugd_protocol::message::{Method, NotificationKind};
use plugd_protocol::outbox::Outbox;
use plugd_protocol::when_woken::WhenWoken;
use plugd_protocol::{
    codes, ErrorObject, FrameCodec, Message, Notification, ProtocolVersion, Request as WireRequest,
    DEFAULT_MAX_FRAME_LEN, ENV_EPOCH, ENV_MAX_FRAME, ENV_SOCKET, ENV_TOKEN,
};
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::net::UnixStream;
use tokio::sync::{oneshot, Notify};
use tokio_util::codec::FramedRead;
use tokio_util::sync::CancellationToken;
use weight::{Then, Threads, Weight};

mod calls;
mod http;
mod lane;
mod local;
mod weight;

/// Bytes of frames that may wait to be written to the supervisor before handlers wait (a
/// larger single frame still goes, once the queue is empty).
const OUTGOING_LIMIT: usize = 8 * 1024 * 1024;

/// What the supervisor put in the plugin's environment.
pub(crate) struct Env {
    pub(crate) socket: String,
    token: String,
    epoch: u64,
    max_frame: usize,
}

impl Env {
    pub(crate) fn from_process() -> Result<Env, Error> {
        fn var(name: &'static str) -> Result<String, Error> {
            std::env::var(name).map_err(|e| Error::NotUnderSupervisor {
                var: name,
                problem: e.to_string(),
            })
        }
        let epoch = var(ENV_EPOCH)?;
        let epoch = epoch.parse().map_err(|_| Error::NotUnderSupervisor {
            var: ENV_EPOCH,
            problem: format!("{epoch:?}, not an unsigned integer"),
        })?;
        let max_frame = match std::env::var(ENV_MAX_FRAME) {
            Ok(v) => v.parse().map_err(|_| Error::NotUnderSupervisor {
                var: ENV_MAX_FRAME,
                problem: format!("{v:?}, not a byte count"),
            })?,
            Err(_) => DEFAULT_MAX_FRAME_LEN,
        };
        Ok(Env {
            socket: var(ENV_SOCKET)?,
            token: var(ENV_TOKEN)?,
            epoch,
            max_frame,
        })
    }
}

/// What every connection of the plugin shares (the first one and its lanes): the handlers,
/// the state, the plugin's own calls, and the count of requests in flight that shutdown
/// drains.
struct Common<S> {
    routes: Vec<Route<S>>,
    hooks: Vec<HookRoute<S>>,
    services: Vec<(String, ServiceHandler<S>)>,
    state: Arc<S>,
    draining: AtomicBool,
    /// Number of tracked requests in flight on every connection, so shutdown can wait for
    /// zero ...
    count: AtomicUsize,
    /// ... told when it gets there.
    idle: Notify,
    on_unload: Mutex<Option<Callback<S>>>,
    on_settings: Option<SettingsCallback<S>>,
    /// The plugin's own calls to the supervisor (on the first connection).
    caller: Arc<Caller>,
    /// Each side's credit per stream, from the welcome.
    window: u32,
    /// The runtime: which handlers the reader polls first (see [`weight`]).
    threads: Threads,
    /// How each route's, hook handler's and service's recent requests went in the reader, in
    /// declaration order.
    weights: Weights,
}

/// State of one connection, shared by its reader loop and its request tasks; the plugin-wide
/// part is [`Common`], reached through it.
struct Shared<S> {
    common: Arc<Common<S>>,
    out: Arc<Outbox>,
    max_frame: AtomicUsize,
    /// This connection's requests in flight, by id (ids are per connection).
    in_flight: Mutex<HashMap<u64, AbortHandle>>,
    /// Open streams (streaming routes' bodies, WebSockets).
    streams: Arc<Streams>,
}

impl<S> std::ops::Deref for Shared<S> {
    type Target = Common<S>;

    fn deref(&self) -> &Common<S> {
        &self.common
    }
}

/// A [`Weight`] per handler, each list in the order of [`Shared`]'s.
struct Weights {
    routes: Vec<Arc<Weight>>,
    hooks: Vec<Arc<Weight>>,
    services: Vec<Arc<Weight>>,
}

impl Weights {
    fn new(routes: usize, hooks: usize, services: usize) -> Weights {
        let list = |n| (0..n).map(|_| Arc::default()).collect();
        Weights {
            routes: list(routes),
            hooks: list(hooks),
            services: list(services),
        }
    }
}

impl<S: Send + Sync + 'static> Shared<S> {
    fn new(common: Arc<Common<S>>, out: Arc<Outbox>, max_frame: usize) -> Arc<Shared<S>> {
        Arc::new(Shared {
            common,
            out,
            max_frame: AtomicUsize::new(max_frame),
            in_flight: Mutex::new(HashMap::new()),
            streams: Arc::default(),
        })
    }

    /// Stops every request of this connection still running.
    fn abort_all(&self) {
        for (_, handle) in self.lock_in_flight().drain() {
            handle.abort();
        }
    }

    fn max_frame(&self) -> usize {
        self.max_frame.load(Ordering::Relaxed)
    }

    /// Queues a frame for the writer; a closed writer means the connection is gone, and the
    /// reader loop will see that too.
    async fn send(&self, frame: Bytes) {
        let _ = self.out.send(frame).await;
    }

    /// Sends the answer to request `id`: its result, or its error.
    async fn answer<T: serde::Serialize>(&self, id: u64, outcome: Result<T, ErrorObject>) {
        if let Some(frame) = result_frame(id, outcome, self.max_frame()) {
            self.send(frame).await;
        }
    }

    async fn reply_error(&self, id: u64, code: i32, message: String) {
        let error = ErrorObject::new(code, message);
        if let Ok(frame) = encode_error(id, &error, self.max_frame()) {
            self.send(frame).await;
        }
    }

    /// Forgets request `id`; whoever removes it from the map lowers the count.
    fn finish(&self, id: u64) -> Option<AbortHandle> {
        let handle = self.lock_in_flight().remove(&id);
        if handle.is_some() && self.count.fetch_sub(1, Ordering::SeqCst) == 1 {
            self.idle.notify_waiters();
        }
        handle
    }

    fn lock_in_flight(&self) -> std::sync::MutexGuard<'_, HashMap<u64, AbortHandle>> {
        // A poisoned map is still a consistent map: tasks only insert and remove.
        self.in_flight.lock().unwrap_or_else(|e| e.into_inner())
    }

    async fn run_unload(&self) {
        let callback = self
            .on_unload
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take();
        if let Some(callback) = callback {
            if let Err(e) = callback(self.state.clone()).await {
                tracing::warn!("on_unload failed: {e}");
            }
        }
    }
}

/// Handshakes on `stream` and serves until shutdown or until the supervisor closes the socket;
/// opens the lanes the welcome asks for and serves them beside it.
pub(crate) async fn serve<S: Send + Sync + 'static>(
    plugin: Plugin<S>,
    stream: UnixStream,
    env: Env,
) -> Result<(), Error> {
    let (rd, wr) = plugd_protocol::socket::split(stream)?;
    let mut frames = FramedRead::new(rd, FrameCodec::new(env.max_frame));
    let out = Outbox::new(wr, OUTGOING_LIMIT);
    let writer = tokio::spawn(out.flusher());

    let hello = Hello {
        protocol: ProtocolVersion::CURRENT,
        name: plugin.name.clone(),
        version: plugin.version.clone(),
        epoch: env.epoch,
        token: env.token.clone(),
        max_frame: u32::try_from(env.max_frame).unwrap_or(u32::MAX),
        routes: plugin
            .routes
            .iter()
            .map(|r| RouteDecl {
                method: r.method.clone(),
                path: r.path.clone(),
                permission: r.permission.clone(),
                stream: r.stream,
                websocket: matches!(r.handler, RouteHandler::Ws(_)),
                max_body: r.max_body,
            })
            .collect(),
        hooks: plugin.hooks.iter().map(|h| h.decl.clone()).collect(),
        services: plugin
            .services
            .iter()
            .map(|(name, _)| name.clone())
            .collect(),
        permissions: plugin.permissions.clone(),
        lanes: MAX_LANES,
    };
    let _ = out
        .send(encode_request::<Handshake>(0, &hello, env.max_frame)?)
        .await;
    let welcome = match first_answer(&mut frames, "handshake")
        .await?
        .decode_result::<Handshake>()?
    {
        Ok(welcome) => welcome,
        Err(refusal) => return Err(Error::Refused(refusal)),
    };
    let max_frame = (welcome.max_frame as usize).min(env.max_frame);
    frames.decoder_mut().clone_from(&FrameCodec::new(max_frame));
    tracing::debug!(supervisor = %welcome.supervisor, lanes = welcome.lanes, "handshake accepted");

    let weights = Weights::new(
        plugin.routes.len(),
        plugin.hooks.len(),
        plugin.services.len(),
    );
    let common = Arc::new(Common {
        routes: plugin.routes,
        hooks: plugin.hooks,
        services: plugin.services,
        state: plugin.state,
        caller: Caller::new(
            out.clone(),
            max_frame,
            Settings::from_wire(&welcome.settings),
        ),
        draining: AtomicBool::new(false),
        count: AtomicUsize::new(0),
        idle: Notify::new(),
        on_unload: Mutex::new(plugin.on_unload),
        on_settings: plugin.on_settings,
        window: welcome
            .stream_window
            .unwrap_or(plugd_protocol::stream::DEFAULT_WINDOW),
        threads: Threads::current(),
        weights,
    });
    // Moved, not cloned: the writer ends when the last sender is gone.
    let shared = Shared::new(common.clone(), out, max_frame);

    // The lanes end when this connection does. They are polled here, beside this connection's
    // reader, not spawned: on a multi-threaded runtime a reader that is a worker's task would
    // put the handlers it spawns in that worker's own next-task slot, where no other worker
    // takes them, and a long handler there holds the runtime's I/O up with it. Polled here,
    // their handlers start like the first connection's.
    let lanes_stop = CancellationToken::new();
    let lanes: FuturesUnordered<_> = (1..=welcome.lanes.min(MAX_LANES))
        .map(|lane| {
            let opening = Opening {
                socket: env.socket.clone(),
                token: env.token.clone(),
                epoch: env.epoch,
                lane,
                max_frame,
            };
            serve_lane(
                common.clone(),
                opening,
                lanes_stop.clone().cancelled_owned(),
            )
        })
        .collect();

    let (stopped_tx, stopped) = oneshot::channel::<()>();
    let first = async {
        let result = read_loop(&shared, frames, Role::First(Some(stopped_tx)), async {
            let _ = stopped.await;
        })
        .await;
        // Whatever ended the loop, nothing more can be answered: stop every task still running.
        shared.caller.close();
        shared.abort_all();
        lanes_stop.cancel();
        result
    };
    let (result, ()) = tokio::join!(first, lanes.collect::<()>());
    shared.run_unload().await;
    // What is queued is written, then the socket's sending side is shut.
    shared.out.finish();
    drop(shared);
    let _ = writer.await;
    result
}

/// The first frame the supervisor sends on a connection: the answer to the plugin's opening
/// request (`what`) with id 0.
async fn first_answer(
    frames: &mut FramedRead<plugd_protocol::socket::ReadHalf, FrameCodec>,
    what: &str,
) -> Result<plugd_protocol::Response, Error> {
    match frames.next().await {
        Some(Ok(Message::Response(resp))) if resp.id == 0 => Ok(resp),
        Some(Ok(other)) => Err(Error::Protocol(plugd_protocol::DecodeError::Malformed(
            format!("expected the {what} response, got {other:?}"),
        ))),
        Some(Err(e)) => Err(e.into()),
        None => Err(Error::Io(std::io::Error::new(
            std::io::ErrorKind::UnexpectedEof,
            format!("the supervisor closed the connection during the {what}"),
        ))),
    }
}

/// Which connection a reader loop serves.
enum Role {
    /// The first connection: every method; holds the sender that ends the loop once a
    /// shutdown has drained.
    First(Option<oneshot::Sender<()>>),
    /// A lane: HTTP requests (and hook and service calls) with their cancels only.
    Lane,
}

/// Reads and dispatches the frames of one connection until `stop` resolves, the supervisor
/// closes it, or a bad frame arrives.
async fn read_loop<S: Send + Sync + 'static>(
    shared: &Arc<Shared<S>>,
    mut frames: FramedRead<plugd_protocol::socket::ReadHalf, FrameCodec>,
    mut role: Role,
    stop: impl std::future::Future<Output = ()>,
) -> Result<(), Error> {
    // Polled only when what ends the loop wakes it, not on every frame.
    let mut stopped = std::pin::pin!(WhenWoken::new(stop));
    let mut corked = false;
    let mut local = Local::new();
    let runner = local.runner();
    let result = {
        let reader = std::pin::pin!(async {
            loop {
                tokio::select! {
                biased;
                _ = &mut stopped => break Ok(()),
                // Handlers woken from elsewhere (those woken by the frames just read ran below).
                _ = local.run(), if local.len() > 0 => {},
                message = frames.next() => {
                    // Answers to frames that arrived together are written together: the outbox
                    // stays corked until no whole frame is left in the read buffer.
                    if !corked {
                        shared.out.cork();
                        corked = true;
                    }
                    match message {
                        Some(Ok(Message::Request(req))) => match &mut role {
                            Role::First(stopped_tx) => {
                                dispatch_request(shared, &mut local, req, stopped_tx).await;
                            }
                            Role::Lane => dispatch_on_lane(shared, &mut local, req).await,
                        },
                        Some(Ok(Message::Notification(note))) => handle_notification(shared, note),
                        Some(Ok(Message::Response(resp))) => {
                            let id = resp.id;
                            if matches!(role, Role::Lane) || !shared.caller.answer(resp) {
                                tracing::debug!(id, "late answer to a call that already ended");
                            }
                        }
                        Some(Err(e)) => {
                            tracing::error!("closing the connection after a bad frame from the supervisor: {e}");
                            break Err(Error::Protocol(e));
                        }
                        None => {
                            if matches!(role, Role::First(_)) {
                                tracing::info!("the supervisor closed the connection; stopping");
                            }
                            break Ok(());
                        }
                    }
                    if !plugd_protocol::frame::frame_buffered(frames.read_buffer()) {
                        // The handlers those frames woke (with their answers) answer in the
                        // same write.
                        local.run_woken().await;
                        shared.out.uncork();
                        corked = false;
                    }
                },
                }
            }
        });
        runner.run(reader).await
    };
    // The handlers still waiting end here, before the connection's state they hold.
    drop(local);
    result
}

async fn dispatch_request<S: Send + Sync + 'static>(
    shared: &Arc<Shared<S>>,
    local: &mut Local,
    req: WireRequest,
    stopped: &mut Option<oneshot::Sender<()>>,
) {
    match req.method.as_str() {
        Http::NAME => http::start_http(shared, local, req).await,
        HookCall::NAME => calls::start_hook(shared, local, req).await,
        ServiceCall::NAME => calls::start_service(shared, local, req).await,
        SettingsMethod::NAME => {
            let params = match req.decode_params::<SettingsMethod>() {
                Ok(p) => p,
                Err(e) => {
                    return shared
                        .reply_error(req.id, codes::INVALID_PARAMS, e.to_string())
                        .await
                }
            };
            // Its own task: the callback may take a while, and the reader must keep reading.
            tokio::spawn(take_settings(shared.clone(), req.id, params));
        }
        Ping::NAME => {
            if let Ok(frame) = encode_response(req.id, &Empty {}, shared.max_frame()) {
                shared.send(frame).await;
            }
        }
        Shutdown::NAME => {
            let grace = match req.decode_params::<Shutdown>() {
                Ok(p) => Duration::from_millis(p.grace_ms),
                Err(e) => {
                    return shared
                        .reply_error(req.id, codes::INVALID_PARAMS, e.to_string())
                        .await
                }
            };
            shared.draining.store(true, Ordering::SeqCst);
            if let Some(stopped) = stopped.take() {
                tokio::spawn(drain_and_stop(shared.clone(), req.id, grace, stopped));
            }
        }
        other => {
            shared
                .reply_error(
                    req.id,
                    codes::METHOD_NOT_FOUND,
                    format!("this plugin does not implement method {other:?}"),
                )
                .await
        }
    }
}

/// Runs the plugin's settings callback on new settings; takes them when it agrees (or when
/// there is none), and answers the supervisor either way.
async fn take_settings<S: Send + Sync + 'static>(
    shared: Arc<Shared<S>>,
    id: u64,
    params: SettingsParams,
) {
    let settings = Settings::from_wire(&params.values);
    if let Some(callback) = &shared.on_settings {
        let verdict = callback(settings.clone(), params.changed, shared.state.clone()).await;
        if let Err(e) = verdict {
            tracing::warn!("refused new settings: {e}");
            return shared
                .reply_error(id, codes::INVALID_PARAMS, e.to_string())
                .await;
        }
    }
    shared.caller.settings.set(settings);
    if let Ok(frame) = encode_response(id, &Empty {}, shared.max_frame()) {
        shared.send(frame).await;
    }
}

/// Waits for the requests in flight (at most `grace`), runs `on_unload`, answers the shutdown
/// request, and tells the reader loop to stop.
async fn drain_and_stop<S: Send + Sync + 'static>(
    shared: Arc<Shared<S>>,
    id: u64,
    grace: Duration,
    stopped: oneshot::Sender<()>,
) {
    let idle = async {
        loop {
            let notified = shared.idle.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if shared.count.load(Ordering::SeqCst) == 0 {
                return;
            }
            notified.await;
        }
    };
    let drained = tokio::time::timeout(grace, idle).await.is_ok();
    if !drained {
        tracing::warn!(
            "shutting down with {} requests still in flight after {grace:?}",
            shared.count.load(Ordering::SeqCst)
        );
    }
    shared.run_unload().await;
    if let Ok(frame) = encode_response(id, &Empty {}, shared.max_frame()) {
        shared.send(frame).await;
    }
    let _ = stopped.send(());
}

/// Forgets request `id` when dropped (see [`Shared::finish`]: only the first removal counts).
struct Finished<S: Send + Sync + 'static>(Arc<Shared<S>>, u64);

impl<S: Send + Sync + 'static> Drop for Finished<S> {
    fn drop(&mut self) {
        self.0.finish(self.1);
    }
}

/// Decodes a request's parameters as method `M`'s and checks that the plugin still takes
/// work; otherwise answers the error itself and gives `None`.
async fn admit<S: Send + Sync + 'static, M: Method>(
    shared: &Arc<Shared<S>>,
    req: &WireRequest,
) -> Option<M::Params> {
    admit_with(shared, req, WireRequest::decode_params::<M>).await
}

/// [`admit`] with the parameters decoded by `decode`.
async fn admit_with<S: Send + Sync + 'static, T>(
    shared: &Arc<Shared<S>>,
    req: &WireRequest,
    decode: impl FnOnce(&WireRequest) -> Result<T, plugd_protocol::DecodeError>,
) -> Option<T> {
    let params = match decode(req) {
        Ok(p) => p,
        Err(e) => {
            shared
                .reply_error(req.id, codes::INVALID_PARAMS, e.to_string())
                .await;
            return None;
        }
    };
    if shared.draining.load(Ordering::SeqCst) {
        shared
            .reply_error(
                req.id,
                codes::SHUTTING_DOWN,
                "the plugin is shutting down".into(),
            )
            .await;
        return None;
    }
    Some(params)
}

/// Runs `task`, the rest of request `id`'s handling by handler `weight`, tracked: a `cancel`
/// aborts it, and shutdown waits for it. `then` says where: in the reader's set (`local`) or in
/// a task of its own.
fn track<S: Send + Sync + 'static>(
    shared: &Arc<Shared<S>>,
    local: &mut Local,
    (id, weight): (u64, &Arc<Weight>),
    then: Then,
    task: impl std::future::Future<Output = ()> + Send + 'static,
) {
    // Forgotten however the run ends: answered, aborted, dropped with the reader's set, or
    // cut short by a panic.
    let done = Finished(shared.clone(), id);
    let (abort, registration) = AbortHandle::new_pair();
    let task = Abortable::new(
        async move {
            let _done = done;
            task.await;
        },
        registration,
    );
    {
        let mut in_flight = shared.lock_in_flight();
        // Counted before it can finish: finish() needs this lock.
        shared.count.fetch_add(1, Ordering::SeqCst);
        in_flight.insert(id, abort);
    }
    match then {
        Then::Task => {
            tokio::spawn(task);
        }
        Then::Reader => {
            // Timed on a multi-threaded runtime only, where a heavy handler can move to a task.
            let weight = (shared.threads == Threads::Many).then(|| weight.clone());
            local.push(Box::pin(task.map(drop)), weight);
        }
    }
}

/// Runs `work`, request `id`'s handling by handler `weight`, and sends its answer: from here
/// when it finishes on its first poll, otherwise tracked (see [`track`]).
async fn run_tracked<S, T>(
    shared: &Arc<Shared<S>>,
    local: &mut Local,
    (id, weight): (u64, &Arc<Weight>),
    work: impl std::future::Future<Output = Result<T, ErrorObject>> + Send + 'static,
) where
    S: Send + Sync + 'static,
    T: serde::Serialize + Send + 'static,
{
    let mut work = Box::pin(work);
    match weight.first_poll(shared.threads, &mut work) {
        Ok(outcome) => shared.answer(id, outcome).await,
        Err(then) => {
            let task_shared = shared.clone();
            track(shared, local, (id, weight), then, async move {
                task_shared.answer(id, work.await).await;
            });
        }
    }
}

fn handle_notification<S: Send + Sync + 'static>(shared: &Arc<Shared<S>>, note: Notification) {
    if shared.streams.route(&note) {
        return;
    }
    if note.method != Cancel::NAME {
        tracing::debug!(method = %note.method, "ignoring an unknown notification");
        return;
    }
    match note.decode_params::<Cancel>() {
        Ok(cancel) => {
            if let Some(handle) = shared.finish(cancel.id) {
                handle.abort();
                tracing::debug!(id = cancel.id, "request cancelled by the supervisor");
            }
        }
        Err(e) => tracing::warn!("bad cancel notification: {e}"),
    }
}
