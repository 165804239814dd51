//! The handshake: the plugin's first message, checked (protocol version, the one-time token in
//! constant time, the epoch, the name) and answered. What the plugin declares is handed to the
//! caller to accept or refuse (the route table is built there); a refusal names its reason to
//! the plugin and to the log alike.
//!
//! What a plugin may declare is bounded, so building its tables costs plugd little: the
//! handshake frame is at most [`MAX_HANDSHAKE_FRAME`] bytes, and [`check_declarations`] holds
//! the counts and lengths to the `MAX_*` constants here. A plugin's frame limit must be at least
//! [`MIN_FRAME`]. Names under `plugd.` are plugd's: a plugin may handle the lifecycle hooks
//! ([`LIFECYCLE_HOOKS`]) but declare no other hook or service there.

use super::calls::{Calls, RESERVED_PREFIX};
use super::connection::Connection;
use crate::error::Failure;
use futures_util::StreamExt;
use plugd_protocol::envelope::{encode_error, encode_response};
use plugd_protocol::message::handshake::{Handshake, Hello, Welcome};
use plugd_protocol::message::settings::SettingsMap;
use plugd_protocol::message::Method;
use plugd_protocol::socket::{self, WriteHalf};
use plugd_protocol::{codes, ErrorObject, FrameCodec, Message, ProtocolVersion};
use std::sync::Arc;
use subtle::ConstantTimeEq;
use tokio::net::UnixStream;
use tokio_util::codec::FramedRead;

/// Largest handshake frame: 1 MiB, room for every declaration the bounds below allow.
pub const MAX_HANDSHAKE_FRAME: usize = 1024 * 1024;
/// Most routes one plugin may declare.
pub const MAX_ROUTES: usize = 1024;
/// Most hooks one plugin may handle.
pub const MAX_HOOKS: usize = 256;
/// Most services one plugin may provide.
pub const MAX_SERVICES: usize = 256;
/// Most permissions one plugin may define.
pub const MAX_PERMISSIONS: usize = 256;
/// Longest route pattern, in bytes.
pub const MAX_PATTERN: usize = 1024;
/// Longest name (hook, service, permission, version, method), in bytes.
pub const MAX_NAME: usize = 256;
/// Smallest frame limit a plugin may announce: 64 KiB.
pub const MIN_FRAME: u32 = 64 * 1024;
/// The hooks plugd fires about a plugin's life, which plugins may handle.
pub const LIFECYCLE_HOOKS: &[&str] = &[
    "plugd.plugin.loaded",
    "plugd.plugin.unloaded",
    "plugd.plugin.upgraded",
    "plugd.plugin.settings_changed",
    // Deprecated alias of `plugd.plugin.upgraded`, fired beside it until protocol 1.2.
    "plugd.plugin.config_changed",
];

/// Checks what a plugin declares against the bounds above; the error names the bound.
pub fn check_declarations(hello: &Hello) -> Result<(), String> {
    let counts = [
        ("routes", hello.routes.len(), MAX_ROUTES),
        ("hooks", hello.hooks.len(), MAX_HOOKS),
        ("services", hello.services.len(), MAX_SERVICES),
        ("permissions", hello.permissions.len(), MAX_PERMISSIONS),
    ];
    for (what, count, max) in counts {
        if count > max {
            return Err(format!(
                "handshake refused: {count} {what} declared, at most {max} are allowed"
            ));
        }
    }
    let long = |what: &str, value: &str, max: usize| {
        (value.len() > max).then(|| {
            format!(
                "handshake refused: {what} {:?}… is {} bytes long, at most {max} are allowed",
                value.chars().take(40).collect::<String>(),
                value.len()
            )
        })
    };
    let names = hello
        .routes
        .iter()
        .flat_map(|r| {
            [("method", &r.method)]
                .into_iter()
                .chain(r.permission.iter().map(|p| ("permission", p)))
        })
        .chain(hello.hooks.iter().map(|h| ("hook", &h.name)))
        .chain(hello.services.iter().map(|s| ("service", s)))
        .chain(hello.permissions.iter().map(|p| ("permission", &p.key)))
        .chain([("version", &hello.version)]);
    for (what, name) in names {
        if let Some(e) = long(what, name, MAX_NAME) {
            return Err(e);
        }
    }
    for route in &hello.routes {
        if let Some(e) = long("route pattern", &route.path, MAX_PATTERN) {
            return Err(e);
        }
    }
    for hook in &hello.hooks {
        if hook.name.starts_with(RESERVED_PREFIX) && !LIFECYCLE_HOOKS.contains(&hook.name.as_str())
        {
            return Err(format!(
                "handshake refused: hook {:?} is under {RESERVED_PREFIX:?}, which is reserved; plugd's own hooks are {}",
                hook.name,
                LIFECYCLE_HOOKS.join(", ")
            ));
        }
    }
    if let Some(service) = hello
        .services
        .iter()
        .find(|s| s.starts_with(RESERVED_PREFIX))
    {
        return Err(format!(
            "handshake refused: service {service:?} is under {RESERVED_PREFIX:?}, which is reserved"
        ));
    }
    if hello.max_frame < MIN_FRAME {
        return Err(format!(
            "handshake refused: max_frame {} is below the smallest allowed, {MIN_FRAME} bytes",
            hello.max_frame
        ));
    }
    Ok(())
}

/// What the supervisor expects of a plugin's handshake.
#[derive(Debug)]
pub struct Expected<'a> {
    /// The name in the plugin's manifest.
    pub name: &'a str,
    /// The one-time token passed to the process.
    pub token: &'a str,
    /// The instance epoch passed to the process.
    pub epoch: u64,
    /// The supervisor's frame limit.
    pub max_frame: usize,
    /// The plugin's effective settings, sent in the welcome.
    pub settings: SettingsMap,
    /// Each side's credit per stream and direction, sent in the welcome.
    pub stream_window: u32,
    /// Lanes offered (protocol 1.3): the welcome asks for this many, or fewer if the plugin
    /// can open fewer.
    pub lanes: u32,
}

/// Reads the plugin's handshake from `stream`, checks it, lets `accept` inspect it (for example
/// to build the route table) and answers. On any failure the plugin is sent the reason, the
/// socket is closed, and the same reason is returned.
pub async fn handshake<T, F>(
    stream: UnixStream,
    expected: &Expected<'_>,
    calls: Option<Arc<Calls>>,
    accept: impl FnOnce(&Hello) -> F,
) -> Result<(Hello, T, Arc<Connection>), Failure>
where
    F: std::future::Future<Output = Result<T, String>>,
{
    let (rd, wr) = socket::split(stream)
        .map_err(|e| Failure::later(format!("cannot set up the connection: {e}")))?;
    let first = MAX_HANDSHAKE_FRAME.min(expected.max_frame);
    let mut frames = FramedRead::new(rd, FrameCodec::new(first));
    let request = match frames.next().await {
        Some(Ok(Message::Request(req))) if req.method == Handshake::NAME => req,
        Some(Ok(other)) => {
            return Err(Failure::later(format!(
                "first message was not a handshake: {other:?}"
            )))
        }
        Some(Err(plugd_protocol::DecodeError::FrameTooLarge { len, max })) => {
            // Sending it again cannot make it smaller.
            return Err(Failure::never(format!(
                "handshake refused: it is {len} bytes long, at most {max} are allowed (declare fewer routes, hooks or services)"
            )));
        }
        Some(Err(e)) => return Err(Failure::later(format!("bad handshake frame: {e}"))),
        None => {
            return Err(Failure::later(
                "closed the connection before sending its handshake",
            ))
        }
    };
    let id = request.id;
    let max = expected.max_frame;
    let hello = match request.decode_params::<Handshake>() {
        Ok(hello) => hello,
        Err(e) => {
            let message = format!("bad handshake: {e}");
            return Err(Failure::never(
                refuse(&wr, id, codes::INVALID_PARAMS, message, max).await,
            ));
        }
    };
    let ours = ProtocolVersion::CURRENT;
    if !ours.is_compatible_with(hello.protocol) {
        let message = format!(
            "protocol version mismatch: the plugin speaks {}, the supervisor speaks {ours}",
            hello.protocol
        );
        return Err(Failure::never(
            refuse(&wr, id, codes::HANDSHAKE_REFUSED, message, max).await,
        ));
    }
    let token_ok: bool = hello
        .token
        .as_bytes()
        .ct_eq(expected.token.as_bytes())
        .into();
    if !token_ok {
        let message = "handshake refused: wrong token (it must be the PLUGD_TOKEN this process was started with)";
        return Err(Failure::later(
            refuse(&wr, id, codes::UNAUTHORIZED, message.into(), max).await,
        ));
    }
    if hello.epoch != expected.epoch {
        let message = format!(
            "handshake refused: epoch {} is not this instance's epoch {}",
            hello.epoch, expected.epoch
        );
        return Err(Failure::later(
            refuse(&wr, id, codes::UNAUTHORIZED, message, max).await,
        ));
    }
    if hello.name != expected.name {
        let message = format!(
            "handshake refused: the plugin calls itself {:?} but its manifest names it {:?}",
            hello.name, expected.name
        );
        return Err(Failure::never(
            refuse(&wr, id, codes::HANDSHAKE_REFUSED, message, max).await,
        ));
    }
    let checked = check_declarations(&hello);
    let accepted = match checked {
        Ok(()) => accept(&hello).await,
        Err(e) => Err(e),
    };
    let accepted = match accepted {
        Ok(accepted) => accepted,
        Err(message) => {
            return Err(Failure::never(
                refuse(&wr, id, codes::HANDSHAKE_REFUSED, message, max).await,
            ))
        }
    };
    let Agreed { max_frame, lanes } = agreed(expected, &hello);
    let welcome = Welcome {
        protocol: ours,
        supervisor: format!("plugd {}", env!("CARGO_PKG_VERSION")),
        max_frame: u32::try_from(max_frame).unwrap_or(u32::MAX),
        settings: expected.settings.clone(),
        stream_window: Some(expected.stream_window),
        lanes,
    };
    let frame = encode_response(id, &welcome, expected.max_frame)
        .map_err(|e| Failure::later(e.to_string()))?;
    wr.write_all(&frame)
        .await
        .map_err(|e| Failure::later(format!("cannot answer the handshake: {e}")))?;
    frames.decoder_mut().clone_from(&FrameCodec::new(max_frame));
    let conn = Connection::start(expected.name.to_owned(), frames, wr, max_frame, calls);
    Ok((hello, accepted, conn))
}

/// What the welcome settles with a plugin from its hello.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Agreed {
    /// The largest frame either side may send: the smaller of both limits.
    pub max_frame: usize,
    /// The lanes the plugin is asked to open: the fewer of plugd's offer and the plugin's.
    pub lanes: u32,
}

/// What the welcome to `hello` settles (see [`Agreed`]).
pub fn agreed(expected: &Expected<'_>, hello: &Hello) -> Agreed {
    Agreed {
        max_frame: expected.max_frame.min(hello.max_frame as usize),
        lanes: expected.lanes.min(hello.lanes),
    }
}

/// Sends the plugin an error answer to its handshake, closes our side, and returns the message.
async fn refuse(wr: &WriteHalf, id: u64, code: i32, message: String, max: usize) -> String {
    let error = ErrorObject::new(code, message.clone());
    if let Ok(frame) = encode_error(id, &error, max) {
        let _ = wr.write_all(&frame).await;
        let _ = wr.shutdown();
    }
    message
}
