//! Lanes (protocol 1.3): the extra connections the welcome asks for, one per HTTP thread of
//! plugd's beyond the first. Each has its own reader, outbox and requests in flight, and shares
//! the rest with the first connection ([`Common`]); it carries plain HTTP requests (and hook
//! and service calls and pings, should plugd send them) and their cancels, never a shutdown or
//! settings. A lane that cannot be opened is left: its requests come on the first connection.

use super::local::Local;
use super::{
    dispatch_request, first_answer, read_loop, Common, Error, Role, Shared, OUTGOING_LIMIT,
};
use plugd_protocol::codes;
use plugd_protocol::envelope::encode_request;
use plugd_protocol::message::control::Ping;
use plugd_protocol::message::handshake::{Lane, LaneHello};
use plugd_protocol::message::hook::HookCall;
use plugd_protocol::message::http::Http;
use plugd_protocol::message::service::ServiceCall;
use plugd_protocol::message::Method;
use plugd_protocol::outbox::Outbox;
use plugd_protocol::{FrameCodec, Request as WireRequest};
use std::sync::Arc;
use tokio::net::UnixStream;
use tokio_util::codec::FramedRead;

/// Most lanes a plugin offers to open (see [`Lane`]): plugd asks for one per thread it serves
/// HTTP on beyond the first.
pub(super) const MAX_LANES: u32 = 16;

/// What opening a lane takes.
pub(super) struct Opening {
    pub(super) socket: String,
    pub(super) token: String,
    pub(super) epoch: u64,
    pub(super) lane: u32,
    pub(super) max_frame: usize,
}

/// Opens lane `opening.lane` to the supervisor and serves the requests that come on it until
/// `stop` resolves (the first connection ended) or the supervisor closes it. A lane that cannot
/// be opened is logged and left: its requests go on the first connection.
pub(super) async fn serve_lane<S: Send + Sync + 'static>(
    common: Arc<Common<S>>,
    opening: Opening,
    stop: impl std::future::Future<Output = ()>,
) {
    let lane = opening.lane;
    // Opening waits on the supervisor's answer: it too ends when the first connection does.
    let mut stop = std::pin::pin!(stop);
    let not_opened = |e: Error| {
        tracing::debug!(
            lane,
            "lane not opened ({e}); its requests come on the first connection"
        );
    };
    let connected = async {
        let stream = UnixStream::connect(&opening.socket).await?;
        Ok::<_, Error>(plugd_protocol::socket::split(stream)?)
    };
    let ended = || {
        Error::Io(std::io::Error::new(
            std::io::ErrorKind::Interrupted,
            "the first connection ended first",
        ))
    };
    let connected = tokio::select! {
        connected = connected => connected,
        () = &mut stop => Err(ended()),
    };
    let (rd, wr) = match connected {
        Ok(halves) => halves,
        Err(e) => return not_opened(e),
    };
    let mut frames = FramedRead::new(rd, FrameCodec::new(opening.max_frame));
    let out = Outbox::new(wr, OUTGOING_LIMIT);
    let writer = tokio::spawn(out.flusher());
    let params = LaneHello {
        epoch: opening.epoch,
        token: opening.token,
        lane,
    };
    let answered = async {
        let frame = encode_request::<Lane>(0, &params, opening.max_frame)?;
        if out.send(frame).await.is_err() {
            return Err(Error::Io(std::io::ErrorKind::BrokenPipe.into()));
        }
        match first_answer(&mut frames, "lane")
            .await?
            .decode_result::<Lane>()?
        {
            Ok(_) => Ok(()),
            Err(refusal) => Err(Error::Refused(refusal)),
        }
    };
    let answered = tokio::select! {
        answered = answered => answered,
        () = &mut stop => Err(ended()),
    };
    if let Err(e) = answered {
        out.finish();
        let _ = writer.await;
        return not_opened(e);
    }
    let shared = Shared::new(common, out, opening.max_frame);
    if let Err(e) = read_loop(&shared, frames, Role::Lane, stop).await {
        tracing::warn!(lane, "lane closed: {e}");
    }
    shared.abort_all();
    shared.out.finish();
    drop(shared);
    let _ = writer.await;
}

/// Dispatches a request that came on a lane: HTTP requests, hook and service calls and pings
/// as on the first connection; the rest belongs to the first connection only.
pub(super) async fn dispatch_on_lane<S: Send + Sync + 'static>(
    shared: &Arc<Shared<S>>,
    local: &mut Local,
    req: WireRequest,
) {
    match req.method.as_str() {
        Http::NAME | HookCall::NAME | ServiceCall::NAME | Ping::NAME => {
            dispatch_request(shared, local, req, &mut None).await;
        }
        other => {
            let message = format!("{other:?} is sent on the first connection, not on a lane");
            shared
                .reply_error(req.id, codes::METHOD_NOT_FOUND, message)
                .await;
        }
    }
}
