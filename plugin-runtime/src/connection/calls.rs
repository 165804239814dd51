//! Hook and service calls from the supervisor: each is admitted, handed to the plugin's
//! handler and answered like any other request (see [`super::run_tracked`]).

use super::local::Local;
use super::{admit, run_tracked, Shared};
use crate::answer::panic_message;
use crate::hook::{HookEvent, ServiceEvent};
use crate::kv::Host;
use futures_util::FutureExt;
use plugd_protocol::codes;
use plugd_protocol::message::hook::HookCall;
use plugd_protocol::message::service::{ServiceCall, ServiceOutput};
use plugd_protocol::{ErrorObject, Request as WireRequest};
use std::panic::AssertUnwindSafe;
use std::sync::Arc;

pub(super) async fn start_hook<S: Send + Sync + 'static>(
    shared: &Arc<Shared<S>>,
    local: &mut Local,
    req: WireRequest,
) {
    let id = req.id;
    let Some(input) = admit::<S, HookCall>(shared, &req).await else {
        return;
    };
    let Some((route, weight)) = shared
        .hooks
        .iter()
        .zip(&shared.weights.hooks)
        .find(|(h, _)| h.decl.name == input.hook)
    else {
        let message = format!("this plugin does not handle hook {:?}", input.hook);
        return shared.reply_error(id, codes::NO_ROUTE, message).await;
    };
    let event = HookEvent {
        payload: serde_json::to_value(&input.payload).unwrap_or(serde_json::Value::Null),
        hook: input.hook,
        depth: input.depth,
        host: Host::new(shared.caller.clone(), input.depth),
    };
    let future = (route.handler)(event, shared.state.clone());
    run_tracked(shared, local, (id, weight), async move {
        match AssertUnwindSafe(future).catch_unwind().await {
            Ok(reply) => Ok(reply.into_wire()),
            Err(panic) => Err(panicked("hook", &panic)),
        }
    })
    .await;
}

pub(super) async fn start_service<S: Send + Sync + 'static>(
    shared: &Arc<Shared<S>>,
    local: &mut Local,
    req: WireRequest,
) {
    let id = req.id;
    let Some(input) = admit::<S, ServiceCall>(shared, &req).await else {
        return;
    };
    let Some(((_, handler), weight)) = shared
        .services
        .iter()
        .zip(&shared.weights.services)
        .find(|((name, _), _)| *name == input.service)
    else {
        let message = format!("this plugin does not provide service {:?}", input.service);
        return shared.reply_error(id, codes::NOT_AVAILABLE, message).await;
    };
    let event = ServiceEvent {
        payload: serde_json::to_value(&input.payload).unwrap_or(serde_json::Value::Null),
        service: input.service,
        depth: input.depth,
        host: Host::new(shared.caller.clone(), input.depth),
    };
    let future = handler(event, shared.state.clone());
    run_tracked(shared, local, (id, weight), async move {
        match AssertUnwindSafe(future).catch_unwind().await {
            Ok(Ok(value)) => Ok(ServiceOutput {
                value: rmpv::ext::to_value(&value).unwrap_or(rmpv::Value::Nil),
            }),
            Ok(Err(message)) => Err(ErrorObject::new(codes::INTERNAL, message)),
            Err(panic) => Err(panicked("service", &panic)),
        }
    })
    .await;
}

/// The error a `kind` ("hook", "service") handler that panicked is answered with.
fn panicked(kind: &str, panic: &Box<dyn std::any::Any + Send>) -> ErrorObject {
    ErrorObject::new(
        codes::HANDLER_PANICKED,
        format!("{kind} handler panicked: {}", panic_message(panic)),
    )
}
