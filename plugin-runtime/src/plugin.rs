//! The plugin builder: routes, handlers, state and lifecycle callbacks, then [`Plugin::run`].

use crate::connection;
use crate::hook::{HookEvent, HookReply, ServiceEvent};
use crate::request::Request;
use crate::response::{IntoResponse, Response};
use crate::settings::Settings;
use crate::stream::WebSocket;
use plugd_protocol::message::handshake::{HookDecl, HookMode, PermissionDecl};
use plugd_protocol::{DecodeError, EncodeError, ErrorObject};
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

pub(crate) type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;
pub(crate) type Handler<S> = Arc<dyn Fn(Request, Arc<S>) -> BoxFuture<Response> + Send + Sync>;
pub(crate) type WsHandler<S> =
    Arc<dyn Fn(Request, WebSocket, Arc<S>) -> BoxFuture<()> + Send + Sync>;
pub(crate) type HookHandler<S> =
    Arc<dyn Fn(HookEvent, Arc<S>) -> BoxFuture<HookReply> + Send + Sync>;
pub(crate) type ServiceHandler<S> =
    Arc<dyn Fn(ServiceEvent, Arc<S>) -> BoxFuture<Result<serde_json::Value, String>> + Send + Sync>;
pub(crate) type Callback<S> = Box<dyn FnOnce(Arc<S>) -> BoxFuture<Result<(), BoxError>> + Send>;
pub(crate) type SettingsCallback<S> =
    Arc<dyn Fn(Settings, Vec<String>, Arc<S>) -> BoxFuture<Result<(), BoxError>> + Send + Sync>;

/// Any error an `on_load` or `on_unload` callback may return.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Why a plugin stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The program was not started by plugd (a variable it sets is missing or invalid).
    #[error("environment variable {var} is {problem}: this program is a plugd plugin and must be started by `plugd serve`")]
    NotUnderSupervisor {
        /// The variable.
        var: &'static str,
        /// `missing` or what is wrong with its value.
        problem: String,
    },
    /// The supervisor's socket could not be reached.
    #[error("cannot connect to the supervisor at {path}: {source}")]
    Connect {
        /// The socket path.
        path: String,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The supervisor refused the handshake.
    #[error("the supervisor refused the handshake: {0}")]
    Refused(ErrorObject),
    /// The supervisor sent something that is not a valid message.
    #[error("protocol error: {0}")]
    Protocol(#[from] DecodeError),
    /// A message could not be encoded.
    #[error("cannot encode a message: {0}")]
    Encode(#[from] EncodeError),
    /// Two routes share a method and path, or a path is not valid.
    #[error("invalid route {method} {path}: {reason}")]
    InvalidRoute {
        /// HTTP method.
        method: String,
        /// Path pattern.
        path: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// The `on_load` callback failed, so the plugin did not start serving.
    #[error("on_load failed: {0}")]
    OnLoad(BoxError),
    /// Reading or writing the socket failed.
    #[error("i/o error: {0}")]
    Io(#[from] std::io::Error),
}

/// One declared hook handler.
pub(crate) struct HookRoute<S> {
    pub(crate) decl: HookDecl,
    pub(crate) handler: HookHandler<S>,
}

/// One declared route.
pub(crate) struct Route<S> {
    pub(crate) method: String,
    pub(crate) path: String,
    pub(crate) permission: Option<String>,
    pub(crate) stream: bool,
    pub(crate) max_body: Option<u64>,
    pub(crate) handler: RouteHandler<S>,
}

/// What serves a route.
pub(crate) enum RouteHandler<S> {
    /// A request/response handler.
    Http(Handler<S>),
    /// A WebSocket handler.
    Ws(WsHandler<S>),
}

/// A plugin under construction: its name, version, shared state, routes and callbacks.
pub struct Plugin<S = ()> {
    pub(crate) name: String,
    pub(crate) version: String,
    pub(crate) state: Arc<S>,
    pub(crate) routes: Vec<Route<S>>,
    pub(crate) hooks: Vec<HookRoute<S>>,
    pub(crate) permissions: Vec<PermissionDecl>,
    pub(crate) services: Vec<(String, ServiceHandler<S>)>,
    pub(crate) on_load: Option<Callback<S>>,
    pub(crate) on_unload: Option<Callback<S>>,
    pub(crate) on_settings: Option<SettingsCallback<S>>,
}

impl<S> std::fmt::Debug for Plugin<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let routes: Vec<String> = self
            .routes
            .iter()
            .map(|r| format!("{} {}", r.method, r.path))
            .collect();
        f.debug_struct("Plugin")
            .field("name", &self.name)
            .field("version", &self.version)
            .field("routes", &routes)
            .finish_non_exhaustive()
    }
}

impl Plugin<()> {
    /// A plugin with no state. `name` must match the `name` in its `plugin.toml`.
    pub fn new(name: impl Into<String>, version: impl Into<String>) -> Self {
        Plugin {
            name: name.into(),
            version: version.into(),
            state: Arc::new(()),
            routes: Vec::new(),
            hooks: Vec::new(),
            permissions: Vec::new(),
            services: Vec::new(),
            on_load: None,
            on_unload: None,
            on_settings: None,
        }
    }
}

impl<S: Send + Sync + 'static> Plugin<S> {
    /// Gives every handler shared access to `state` (use atomics or a lock inside it to mutate).
    /// Call before declaring routes: routes declared earlier are dropped.
    pub fn with_state<T: Send + Sync + 'static>(self, state: T) -> Plugin<T> {
        Plugin {
            name: self.name,
            version: self.version,
            state: Arc::new(state),
            routes: Vec::new(),
            hooks: Vec::new(),
            permissions: Vec::new(),
            services: Vec::new(),
            on_load: None,
            on_unload: None,
            on_settings: None,
        }
    }

    /// Declares a route: `method` such as `GET`, and a path such as `/items/{id}` where `{id}`
    /// captures one segment (read it with [`Request::param`]) and `{*rest}` the rest of the path.
    pub fn route<H, F, R>(mut self, method: &str, path: &str, handler: H) -> Self
    where
        H: Fn(Request, Arc<S>) -> F + Send + Sync + 'static,
        F: Future<Output = R> + Send + 'static,
        R: IntoResponse + 'static,
    {
        let handler: Handler<S> = Arc::new(move |req, state| {
            let fut = handler(req, state);
            Box::pin(async move { fut.await.into_response() })
        });
        self.routes.push(Route {
            method: method.to_ascii_uppercase(),
            path: path.to_owned(),
            permission: None,
            stream: false,
            max_body: None,
            handler: RouteHandler::Http(handler),
        });
        self
    }

    /// Declares a WebSocket route at `path` (a `GET` route that takes upgrades). plugd answers
    /// the client's handshake and pings; `handler` gets the upgrade request and the socket, and
    /// the socket closes (1000) when it returns.
    pub fn websocket<H, F>(mut self, path: &str, handler: H) -> Self
    where
        H: Fn(Request, WebSocket, Arc<S>) -> F + Send + Sync + 'static,
        F: Future<Output = ()> + Send + 'static,
    {
        let handler: WsHandler<S> =
            Arc::new(move |req, socket, state| Box::pin(handler(req, socket, state)));
        self.routes.push(Route {
            method: "GET".into(),
            path: path.to_owned(),
            permission: None,
            stream: false,
            max_body: None,
            handler: RouteHandler::Ws(handler),
        });
        self
    }

    /// Makes the last declared route a streaming route: its request body arrives in chunks
    /// ([`Request::body_stream`]), of any size unless [`Plugin::max_body`] or the plugin's
    /// limits bound it, and it may answer with a streamed body ([`Response::stream`],
    /// [`Response::channel`], [`Response::sse`]).
    pub fn stream(mut self) -> Self {
        if let Some(last) = self.routes.last_mut() {
            last.stream = true;
        }
        self
    }

    /// Bounds the last declared route's request body to `bytes`: plugd answers 413 to a larger
    /// one before it reaches the plugin (on a route that is not streaming, never above the
    /// plugin's `max_body`).
    pub fn max_body(mut self, bytes: u64) -> Self {
        if let Some(last) = self.routes.last_mut() {
            last.max_body = Some(bytes);
        }
        self
    }

    /// Declares a `GET` route.
    pub fn get<H, F, R>(self, path: &str, handler: H) -> Self
    where
        H: Fn(Request, Arc<S>) -> F + Send + Sync + 'static,
        F: Future<Output = R> + Send + 'static,
        R: IntoResponse + 'static,
    {
        self.route("GET", path, handler)
    }

    /// Declares a `POST` route.
    pub fn post<H, F, R>(self, path: &str, handler: H) -> Self
    where
        H: Fn(Request, Arc<S>) -> F + Send + Sync + 'static,
        F: Future<Output = R> + Send + 'static,
        R: IntoResponse + 'static,
    {
        self.route("POST", path, handler)
    }

    /// Declares a `PUT` route.
    pub fn put<H, F, R>(self, path: &str, handler: H) -> Self
    where
        H: Fn(Request, Arc<S>) -> F + Send + Sync + 'static,
        F: Future<Output = R> + Send + 'static,
        R: IntoResponse + 'static,
    {
        self.route("PUT", path, handler)
    }

    /// Declares a `DELETE` route.
    pub fn delete<H, F, R>(self, path: &str, handler: H) -> Self
    where
        H: Fn(Request, Arc<S>) -> F + Send + Sync + 'static,
        F: Future<Output = R> + Send + 'static,
        R: IntoResponse + 'static,
    {
        self.route("DELETE", path, handler)
    }

    /// Handles hook `name` in `mode`; lower `priority` runs first in `filter`, `first` and
    /// `veto` hooks. The handler gets the payload as JSON and answers with a [`HookReply`].
    pub fn hook<H, F, R>(mut self, name: &str, mode: HookMode, priority: i32, handler: H) -> Self
    where
        H: Fn(HookEvent, Arc<S>) -> F + Send + Sync + 'static,
        F: Future<Output = R> + Send + 'static,
        R: Into<HookReply> + 'static,
    {
        let handler: HookHandler<S> = Arc::new(move |event, state| {
            let fut = handler(event, state);
            Box::pin(async move { fut.await.into() })
        });
        self.hooks.push(HookRoute {
            decl: HookDecl {
                name: name.to_owned(),
                mode,
                priority,
                fail_closed: false,
            },
            handler,
        });
        self
    }

    /// Provides service `name` (such as `markdown.render`) to other plugins. The handler gets
    /// the caller's JSON argument and answers a JSON value, or an error message.
    pub fn service<H, F>(mut self, name: &str, handler: H) -> Self
    where
        H: Fn(ServiceEvent, Arc<S>) -> F + Send + Sync + 'static,
        F: Future<Output = Result<serde_json::Value, String>> + Send + 'static,
    {
        let handler: ServiceHandler<S> =
            Arc::new(move |event, state| Box::pin(handler(event, state)));
        self.services.push((name.to_owned(), handler));
        self
    }

    /// Defines a permission (such as `notes.write`) that tokens can be granted and routes can
    /// require; listed for admins in `GET /admin/permissions`.
    pub fn permission(mut self, key: &str, description: &str) -> Self {
        self.permissions.push(PermissionDecl {
            key: key.to_owned(),
            description: description.to_owned(),
        });
        self
    }

    /// Makes the last declared route require `permission`: plugd answers 403 to callers whose
    /// token lacks it, before the request reaches the plugin.
    pub fn require(mut self, permission: &str) -> Self {
        if let Some(last) = self.routes.last_mut() {
            last.permission = Some(permission.to_owned());
        }
        self
    }

    /// Makes this plugin's last declared `veto` hook fail closed: if it errors, times out or is
    /// down, the hook rejects instead of ignoring it.
    pub fn fail_closed(mut self) -> Self {
        if let Some(last) = self.hooks.last_mut() {
            last.decl.fail_closed = true;
        }
        self
    }

    /// Runs `f` before the handshake, so before the first request; an error stops the plugin
    /// (and, during a reload, leaves the running version serving).
    pub fn on_load<F, Fut>(mut self, f: F) -> Self
    where
        F: FnOnce(Arc<S>) -> Fut + Send + 'static,
        Fut: Future<Output = Result<(), BoxError>> + Send + 'static,
    {
        self.on_load = Some(Box::new(move |s| Box::pin(f(s))));
        self
    }

    /// Runs `f` when an admin changes the plugin's settings, with the new settings and the
    /// names of the changed ones, before handlers see them. `Ok` takes them; an error refuses
    /// them: the plugin keeps its current settings and the admin is told the error's message.
    /// Without this callback, every change is taken. Read the settings in handlers with
    /// [`crate::Host::settings`].
    pub fn on_settings_changed<F, Fut>(mut self, f: F) -> Self
    where
        F: Fn(Settings, Vec<String>, Arc<S>) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<(), BoxError>> + Send + 'static,
    {
        self.on_settings = Some(Arc::new(move |settings, changed, s| {
            Box::pin(f(settings, changed, s))
        }));
        self
    }

    /// Runs `f` once when the plugin stops, after the requests in flight have finished.
    pub fn on_unload<F, Fut>(mut self, f: F) -> Self
    where
        F: FnOnce(Arc<S>) -> Fut + Send + 'static,
        Fut: Future<Output = Result<(), BoxError>> + Send + 'static,
    {
        self.on_unload = Some(Box::new(move |s| Box::pin(f(s))));
        self
    }

    /// Connects to the supervisor named by the environment, handshakes, and serves until asked
    /// to shut down or until the connection closes. Installs stderr logging first.
    pub async fn run(self) -> Result<(), Error> {
        crate::init_logging();
        let result = self.run_inner().await;
        if let Err(e) = &result {
            tracing::error!("plugin stopped: {e}");
        }
        result
    }

    async fn run_inner(mut self) -> Result<(), Error> {
        self.check_routes()?;
        let env = connection::Env::from_process()?;
        // Loaded before the handshake: the supervisor routes requests to a plugin (or swaps it in
        // during a reload) only once it is ready for them.
        if let Some(on_load) = self.on_load.take() {
            on_load(self.state.clone()).await.map_err(Error::OnLoad)?;
        }
        let stream = tokio::net::UnixStream::connect(&env.socket)
            .await
            .map_err(|source| Error::Connect {
                path: env.socket.clone(),
                source,
            })?;
        connection::serve(self, stream, env).await
    }

    fn check_routes(&self) -> Result<(), Error> {
        for (i, r) in self.routes.iter().enumerate() {
            let invalid = |reason| Error::InvalidRoute {
                method: r.method.clone(),
                path: r.path.clone(),
                reason,
            };
            if !r.path.starts_with('/') {
                return Err(invalid("a path must start with '/'"));
            }
            if self.routes[..i]
                .iter()
                .any(|o| o.method == r.method && o.path == r.path)
            {
                return Err(invalid("declared twice"));
            }
        }
        Ok(())
    }
}
