//! What a plugin's calls reach beyond itself: services provided by other running plugins and
//! hooks fired at every handler. Implements [`crate::ipc::Peers`] over the [`Registry`], so the
//! connection layer can answer `service.call` and `hook.fire` without knowing plugin states.

use super::hooks::{self, MAX_DEPTH};
use super::reconcile::{PluginState, Registry};
use crate::ipc::{CallError, Peers};
use bytes::Bytes;
use futures_util::future::BoxFuture;
use plugd_protocol::message::service::{check_output, ServiceCall, ServiceCallRaw};
use plugd_protocol::{codes, ErrorObject};
use std::sync::Arc;

/// The other plugins, found in the registry the reconcile loop publishes.
#[derive(Debug, Clone)]
pub struct RegistryPeers {
    registry: Arc<Registry>,
}

impl RegistryPeers {
    /// Peers as `registry` knows them.
    pub fn new(registry: Arc<Registry>) -> RegistryPeers {
        RegistryPeers { registry }
    }

    /// Finds the provider of `p.service` and forwards the call to it one level deeper, the
    /// argument and the answer passed on as raw MessagePack (the answer checked first).
    async fn call_service(&self, p: ServiceCallRaw) -> Result<Bytes, ErrorObject> {
        if p.depth >= MAX_DEPTH {
            return Err(ErrorObject::new(
                codes::DEPTH_EXCEEDED,
                format!(
                    "call chain deeper than {MAX_DEPTH} (a loop between plugins?) at service {:?}",
                    p.service
                ),
            ));
        }
        let provider = self
            .registry
            .plugins()
            .values()
            .find_map(|slot| match &*slot.state() {
                PluginState::Ready(i) if i.services.contains(&p.service) => Some(i.clone()),
                _ => None,
            });
        let Some(provider) = provider else {
            return Err(ErrorObject::new(
                codes::NOT_AVAILABLE,
                format!("no running plugin provides service {:?}", p.service),
            ));
        };
        let forwarded = ServiceCallRaw {
            depth: p.depth + 1,
            ..p
        };
        let answer = provider
            .conn
            .call_with::<ServiceCall>(
                |id, max| forwarded.encode(id, max),
                self.registry.hook_timeout(),
            )
            .await
            .and_then(|response| {
                // `call_with` turns an error answer into `CallError::Remote`: this is a result.
                let raw = response.outcome.map_err(CallError::Remote)?;
                check_output(&raw).map_err(|e| CallError::Protocol(e.to_string()))
            });
        match answer {
            Ok(raw) => Ok(raw),
            Err(CallError::Remote(e)) => Err(e),
            Err(e) => Err(ErrorObject::new(
                codes::NOT_AVAILABLE,
                format!(
                    "service {:?} of plugin {:?} failed: {e}",
                    forwarded.service, provider.manifest.name
                ),
            )),
        }
    }
}

impl Peers for RegistryPeers {
    fn call_service(
        &self,
        input: ServiceCallRaw,
    ) -> BoxFuture<'static, Result<Bytes, ErrorObject>> {
        let this = self.clone();
        Box::pin(async move { RegistryPeers::call_service(&this, input).await })
    }

    fn fire_hook(
        &self,
        hook: String,
        payload: rmpv::Value,
        depth: u32,
    ) -> BoxFuture<'static, Result<rmpv::Value, ErrorObject>> {
        let registry = self.registry.clone();
        Box::pin(async move {
            let plugins = registry.snapshot();
            match hooks::fire(&plugins, &hook, payload, depth, registry.hook_timeout()).await {
                Ok(fired) => Ok(rmpv::ext::to_value(fired.to_value()).unwrap_or(rmpv::Value::Nil)),
                Err(e @ hooks::FireError::ChainTooDeep) => {
                    Err(ErrorObject::new(codes::DEPTH_EXCEEDED, e.to_string()))
                }
                Err(e) => Err(ErrorObject::new(codes::INVALID_PARAMS, e.to_string())),
            }
        })
    }
}
