//! Lanes (protocol 1.3): extra connections to a plugin instance for plain HTTP requests, one
//! per thread that serves HTTP beside the main one.
//!
//! Each such thread runs its own current-thread runtime with its own listening socket, and its
//! lane's [`Connection`] is driven by that runtime. A request taken on that thread is sent on
//! its lane and its answer read there, so neither crosses to another thread: no wake-up of
//! another thread per request, which on two cores costs more than the second thread gains.
//! Everything else (hooks, services, streams, pings, settings, shutdown) stays on the first
//! connection, and a request finds the first connection whenever its lane is not open (a
//! plugin that offers no lanes, a lane not open yet, or one that closed).
//!
//! Opening a lane is bounded like the handshake: its first frame is at most
//! [`MAX_LANE_FRAME`] bytes and must arrive by the deadline, it must carry the instance's
//! token (compared in constant time) and epoch and a lane not open yet, and at most twice as
//! many connections as lanes, and four more, are taken. A refused lane is answered with the reason and closed;
//! the instance serves on without it.

use super::connection::Connection;
use bytes::Bytes;
use plugd_protocol::envelope::{encode_error, encode_response};
use plugd_protocol::frame::HEADER_LEN;
use plugd_protocol::message::control::Empty;
use plugd_protocol::message::handshake::{Lane, LaneHello};
use plugd_protocol::message::Method;
use plugd_protocol::{codes, ErrorObject, FrameCodec, Message};
use std::cell::Cell;
use std::sync::{Arc, OnceLock};
use subtle::ConstantTimeEq;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{UnixListener, UnixStream};
use tokio::runtime::Handle;
use tokio::time::Instant;
use tokio_util::codec::FramedRead;

/// Largest first frame of a lane: a `lane` request is a token and two numbers.
pub const MAX_LANE_FRAME: usize = 4096;

thread_local! {
    static CURRENT: Cell<usize> = const { Cell::new(0) };
}

/// The lane of the calling thread: 0 (the instance's first connection) except on the threads
/// that serve HTTP beside the main one, each of which has a lane of its own.
pub fn current() -> usize {
    CURRENT.with(Cell::get)
}

/// Makes the calling thread's requests take lane `lane`.
pub fn set_current(lane: usize) {
    CURRENT.with(|c| c.set(lane));
}

/// The runtimes that drive lanes 1, 2, …: lane `k`'s connections live on runtime `k - 1`.
#[derive(Debug, Clone, Default)]
pub struct LaneRuntimes(Arc<[Handle]>);

impl LaneRuntimes {
    /// Lanes driven by `handles`, in lane order from lane 1.
    pub fn new(handles: Vec<Handle>) -> LaneRuntimes {
        LaneRuntimes(handles.into())
    }

    /// How many lanes each instance is offered.
    pub fn count(&self) -> u32 {
        u32::try_from(self.0.len()).unwrap_or(u32::MAX)
    }
}

/// An instance's lanes, each set once it is open.
#[derive(Debug, Default)]
pub struct Lanes(Box<[OnceLock<Arc<Connection>>]>);

impl Lanes {
    /// `count` lanes, none open yet.
    pub fn new(count: usize) -> Lanes {
        Lanes((0..count).map(|_| OnceLock::new()).collect())
    }

    /// Lane `lane` (from 1) when it is open and its connection has not closed.
    pub fn get(&self, lane: usize) -> Option<&Arc<Connection>> {
        let conn = self.0.get(lane.checked_sub(1)?)?.get()?;
        (!conn.is_closed()).then_some(conn)
    }

    /// How many lanes are open.
    pub fn open(&self) -> usize {
        self.0
            .iter()
            .filter_map(OnceLock::get)
            .filter(|c| !c.is_closed())
            .count()
    }

    /// Calls waiting for an answer on all lanes.
    pub fn in_flight(&self) -> usize {
        self.0
            .iter()
            .filter_map(OnceLock::get)
            .map(|c| c.in_flight())
            .sum()
    }

    /// Closes every open lane, failing its calls with `reason`.
    pub fn close(&self, reason: &str) {
        for conn in self.0.iter().filter_map(OnceLock::get) {
            conn.close(reason);
        }
    }
}

/// What the opener of a lane must show, and what its connection is set up with.
#[derive(Debug, Clone)]
pub struct LaneExpected {
    /// The plugin's name, for the connection's messages.
    pub plugin: String,
    /// The instance's one-time token.
    pub token: String,
    /// The instance's epoch.
    pub epoch: u64,
    /// The frame limit agreed in the handshake.
    pub max_frame: usize,
}

/// Accepts the instance's lanes on `listener` until every one is open, `deadline` passes, or
/// `first` (the instance's first connection) closes. Each lane's connection is started on its
/// runtime in `runtimes` and set in `lanes`.
pub async fn accept(
    listener: UnixListener,
    expected: LaneExpected,
    lanes: Arc<Lanes>,
    runtimes: LaneRuntimes,
    first: Arc<Connection>,
    deadline: Instant,
) {
    let wanted = lanes.0.len().min(runtimes.0.len());
    // Which lanes were taken (their connections are set in `lanes` once on their threads).
    let mut taken = vec![false; wanted];
    let accepting = async {
        for _ in 0..wanted * 2 + 4 {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            match open(stream, &expected, &taken).await {
                Ok((lane, stream)) => {
                    taken[lane - 1] = true;
                    start(stream, &expected, &lanes, lane, &runtimes.0[lane - 1]);
                }
                Err(why) => {
                    tracing::warn!(plugin = %expected.plugin, "lane refused: {why}");
                }
            }
            if taken.iter().all(|t| *t) {
                return;
            }
        }
    };
    tokio::select! {
        () = accepting => {}
        () = tokio::time::sleep_until(deadline) => {
            tracing::debug!(plugin = %expected.plugin, open = lanes.open(), "not every lane opened in time; the first connection takes their requests");
        }
        () = first.closed() => {}
    }
}

/// Reads and checks a lane's opening request and answers it; gives the lane's number and the
/// stream, or why it was refused (which the opener was told).
async fn open(
    mut stream: UnixStream,
    expected: &LaneExpected,
    taken: &[bool],
) -> Result<(usize, UnixStream), String> {
    let wanted = taken.len();
    let (id, hello) = match read_opening(&mut stream).await {
        Ok(opening) => opening,
        Err(why) => {
            let _ = stream.shutdown().await;
            return Err(why);
        }
    };
    let token_ok: bool = hello
        .token
        .as_bytes()
        .ct_eq(expected.token.as_bytes())
        .into();
    let lane = usize::try_from(hello.lane).unwrap_or(usize::MAX);
    let refusal = if !token_ok {
        Some((codes::UNAUTHORIZED, "wrong token".to_owned()))
    } else if hello.epoch != expected.epoch {
        Some((
            codes::UNAUTHORIZED,
            format!(
                "epoch {} is not this instance's epoch {}",
                hello.epoch, expected.epoch
            ),
        ))
    } else if lane == 0 || lane > wanted {
        Some((
            codes::INVALID_PARAMS,
            format!("lane {lane} was not asked for (lanes 1 to {wanted} were)"),
        ))
    } else if taken[lane - 1] {
        Some((
            codes::INVALID_PARAMS,
            format!("lane {lane} is open already"),
        ))
    } else {
        None
    };
    let answer = match &refusal {
        Some((code, message)) => encode_error(
            id,
            &ErrorObject::new(*code, format!("lane refused: {message}")),
            MAX_LANE_FRAME,
        ),
        None => encode_response(id, &Empty {}, MAX_LANE_FRAME),
    }
    .map_err(|e| e.to_string())?;
    let written = stream.write_all(&answer).await;
    match (refusal, written) {
        (Some((_, message)), _) => {
            let _ = stream.shutdown().await;
            Err(message)
        }
        (None, Err(e)) => Err(format!("cannot answer lane {lane}: {e}")),
        (None, Ok(())) => Ok((lane, stream)),
    }
}

/// Reads exactly one frame, which must be a `lane` request: nothing beyond it is read, so the
/// connection's reader starts at the next frame.
async fn read_opening(stream: &mut UnixStream) -> Result<(u64, LaneHello), String> {
    let mut header = [0u8; HEADER_LEN];
    stream
        .read_exact(&mut header)
        .await
        .map_err(|e| format!("no opening frame: {e}"))?;
    let len = u32::from_be_bytes(header) as usize;
    if len > MAX_LANE_FRAME {
        return Err(format!(
            "opening frame of {len} bytes, at most {MAX_LANE_FRAME} are allowed"
        ));
    }
    let mut body = vec![0u8; len];
    stream
        .read_exact(&mut body)
        .await
        .map_err(|e| format!("opening frame cut short: {e}"))?;
    match Message::decode(Bytes::from(body)) {
        Ok(Message::Request(req)) if req.method == Lane::NAME => {
            let hello = req
                .decode_params::<Lane>()
                .map_err(|e| format!("bad lane request: {e}"))?;
            Ok((req.id, hello))
        }
        Ok(other) => Err(format!("first message was not a lane request: {other:?}")),
        Err(e) => Err(format!("bad opening frame: {e}")),
    }
}

/// Starts lane `lane`'s connection on `runtime`, whose thread will drive it, and sets it in
/// `lanes` once it runs there.
fn start(
    stream: UnixStream,
    expected: &LaneExpected,
    lanes: &Arc<Lanes>,
    lane: usize,
    runtime: &Handle,
) {
    let std = match stream.into_std() {
        Ok(std) => std,
        Err(e) => {
            tracing::warn!(plugin = %expected.plugin, lane, "cannot move lane to its thread: {e}");
            return;
        }
    };
    let (plugin, max_frame, lanes) = (expected.plugin.clone(), expected.max_frame, lanes.clone());
    runtime.spawn(async move {
        let split = UnixStream::from_std(std).and_then(plugd_protocol::socket::split);
        match split {
            Ok((rd, wr)) => {
                let frames = FramedRead::new(rd, FrameCodec::new(max_frame));
                let conn = Connection::start(plugin, frames, wr, max_frame, None);
                // Each lane is taken once (checked on accept), so this is its only setting.
                let _ = lanes.0[lane - 1].set(conn);
            }
            Err(e) => tracing::warn!(%plugin, lane, "cannot set up lane: {e}"),
        }
    });
}
