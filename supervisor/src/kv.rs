//! Answers plugins' calls to the supervisor: the key-value store (`kv.*`, each plugin confined
//! to its own keys), other plugins' services (`service.call`) and hooks (`hook.fire`). The
//! calling plugin's name comes from its connection, never from the request.

use crate::ipc::CallError;
use crate::plugin::PluginState;
use crate::proxy::AppState;
use crate::store::Store;
use bytes::Bytes;
use plugd_protocol::envelope::{encode_error, encode_response};
use plugd_protocol::message::hook::HookFire;
use plugd_protocol::message::kv::{
    KvCas, KvCasResult, KvDelete, KvDeleted, KvEntries, KvEntry, KvGet, KvList, KvSet, KvValue,
    KvVersion,
};
use plugd_protocol::message::service::{ServiceCall, ServiceInput};
use plugd_protocol::message::Method;
use plugd_protocol::{codes, ErrorObject, Request};
use serde::Serialize;
use std::sync::Arc;
use std::time::Duration;

type CallFn =
    dyn Fn(String, Request, usize) -> crate::store::BoxFuture<'static, Bytes> + Send + Sync;

/// Answers one call from a plugin: (plugin name, request, frame limit) → response frame.
#[derive(Clone)]
pub struct PluginCalls(Arc<CallFn>);

impl std::fmt::Debug for PluginCalls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("PluginCalls")
    }
}

impl PluginCalls {
    /// Answers `request` from `plugin` with a complete response frame.
    pub fn call(
        &self,
        plugin: String,
        request: Request,
        max: usize,
    ) -> crate::store::BoxFuture<'static, Bytes> {
        (self.0)(plugin, request, max)
    }
}

/// Longest key accepted.
pub const MAX_KEY: usize = 512;

/// The handler for plugins' calls, backed by the store and the other plugins in `app`.
pub fn calls(app: Arc<AppState>) -> PluginCalls {
    PluginCalls(Arc::new(move |plugin, request, max| {
        let app = app.clone();
        Box::pin(async move { answer(&app, &plugin, &request, max).await })
    }))
}

async fn answer(app: &AppState, plugin: &str, request: &Request, max: usize) -> Bytes {
    let id = request.id;
    let result = match request.method.as_str() {
        ServiceCall::NAME => call_service(app, request).await,
        HookFire::NAME => fire_hook(app, request).await,
        _ => handle(&app.store, plugin, request).await,
    };
    let frame = match result {
        Ok(frame) => frame(id, max),
        Err(error) => encode_error(id, &error, max),
    };
    frame.unwrap_or_else(|e| {
        let error = ErrorObject::new(codes::INTERNAL, format!("cannot encode the answer: {e}"));
        encode_error(id, &error, max).unwrap_or_default()
    })
}

type Encoder = Box<dyn FnOnce(u64, usize) -> Result<Bytes, plugd_protocol::EncodeError> + Send>;

fn reply<T: Serialize + Send + 'static>(value: T) -> Result<Encoder, ErrorObject> {
    Ok(Box::new(move |id, max| encode_response(id, &value, max)))
}

fn params<M: Method>(request: &Request) -> Result<M::Params, ErrorObject> {
    request
        .decode_params::<M>()
        .map_err(|e| ErrorObject::new(codes::INVALID_PARAMS, e.to_string()))
}

fn check_key(key: &str) -> Result<(), ErrorObject> {
    if key.is_empty() || key.len() > MAX_KEY {
        return Err(ErrorObject::new(
            codes::INVALID_PARAMS,
            format!("a key must be 1 to {MAX_KEY} bytes long"),
        ));
    }
    Ok(())
}

fn store_failed(e: anyhow::Error) -> ErrorObject {
    ErrorObject::new(codes::INTERNAL, format!("the store is unavailable: {e:#}"))
}

fn version(v: i64) -> u64 {
    u64::try_from(v).unwrap_or(0)
}

async fn call_service(app: &AppState, request: &Request) -> Result<Encoder, ErrorObject> {
    let p = params::<ServiceCall>(request)?;
    if p.depth >= crate::hooks::MAX_DEPTH {
        return Err(ErrorObject::new(
            codes::DEPTH_EXCEEDED,
            format!(
                "call chain deeper than {} (a loop between plugins?) at service {:?}",
                crate::hooks::MAX_DEPTH,
                p.service
            ),
        ));
    }
    let provider = app
        .plugins
        .load()
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
    let forwarded = ServiceInput {
        depth: p.depth + 1,
        ..p
    };
    match provider
        .conn
        .call::<ServiceCall>(&forwarded, app.hook_timeout)
        .await
    {
        Ok(out) => reply(out),
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

async fn fire_hook(app: &AppState, request: &Request) -> Result<Encoder, ErrorObject> {
    let p = params::<HookFire>(request)?;
    let plugins = app.plugins.load();
    match crate::hooks::fire(&plugins, &p.hook, p.payload, p.depth, app.hook_timeout).await {
        Ok(answer) => reply(rmpv::ext::to_value(&answer).unwrap_or(rmpv::Value::Nil)),
        Err(e) => Err(ErrorObject::new(codes::DEPTH_EXCEEDED, e)),
    }
}

async fn handle(store: &Store, plugin: &str, request: &Request) -> Result<Encoder, ErrorObject> {
    match request.method.as_str() {
        KvGet::NAME => {
            let p = params::<KvGet>(request)?;
            check_key(&p.key)?;
            let item = store.kv_get(plugin, &p.key).await.map_err(store_failed)?;
            reply(KvValue {
                version: item.as_ref().map(|i| version(i.version)),
                value: item.map(|i| Bytes::from(i.value)),
            })
        }
        KvSet::NAME => {
            let p = params::<KvSet>(request)?;
            check_key(&p.key)?;
            let ttl = p.ttl_ms.map(Duration::from_millis);
            let v = store
                .kv_set(plugin, &p.key, &p.value, ttl)
                .await
                .map_err(store_failed)?;
            reply(KvVersion {
                version: version(v),
            })
        }
        KvDelete::NAME => {
            let p = params::<KvDelete>(request)?;
            check_key(&p.key)?;
            let deleted = store
                .kv_delete(plugin, &p.key)
                .await
                .map_err(store_failed)?;
            reply(KvDeleted { deleted })
        }
        KvList::NAME => {
            let p = params::<KvList>(request)?;
            let limit = i64::from(p.limit.unwrap_or(1000).min(10_000));
            let items = store
                .kv_list(plugin, &p.prefix, limit)
                .await
                .map_err(store_failed)?;
            reply(KvEntries {
                entries: items
                    .into_iter()
                    .map(|i| KvEntry {
                        key: i.key,
                        value: Bytes::from(i.value),
                        version: version(i.version),
                    })
                    .collect(),
            })
        }
        KvCas::NAME => {
            let p = params::<KvCas>(request)?;
            check_key(&p.key)?;
            let expected = p.expected.map(|v| i64::try_from(v).unwrap_or(i64::MAX));
            let ttl = p.ttl_ms.map(Duration::from_millis);
            let (ok, v) = store
                .kv_cas(plugin, &p.key, expected, &p.value, ttl)
                .await
                .map_err(store_failed)?;
            reply(KvCasResult {
                ok,
                version: v.map(version),
            })
        }
        other => Err(ErrorObject::new(
            codes::METHOD_NOT_FOUND,
            format!("the supervisor does not implement method {other:?}"),
        )),
    }
}
