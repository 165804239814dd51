//! Answers the calls a plugin makes to plugd: its key-value store (`kv.*`, each plugin confined
//! to its own keys), other plugins' services (`service.call`) and hooks (`hook.fire`). The
//! calling plugin's name comes from its connection, never from the request.
//!
//! Services and hooks reach other plugins, which this layer does not know: the supervisor hands
//! in a [`Peers`] that does.

use crate::store::Store;
use bytes::Bytes;
use futures_util::future::BoxFuture;
use plugd_protocol::envelope::{encode_error, encode_response};
use plugd_protocol::message::hook::HookFire;
use plugd_protocol::message::kv::{
    KvCas, KvCasResult, KvDelete, KvDeleted, KvEntries, KvEntry, KvGet, KvList, KvSet, KvValue,
    KvVersion,
};
use plugd_protocol::message::service::{ServiceCall, ServiceInput, ServiceOutput};
use plugd_protocol::message::Method;
use plugd_protocol::{codes, ErrorObject, Request};
use serde::Serialize;
use std::sync::Arc;
use std::time::Duration;

/// Longest key accepted.
pub const MAX_KEY: usize = 512;

/// The other plugins, as a plugin's calls reach them.
pub trait Peers: Send + Sync + 'static {
    /// Calls a service on the running plugin that provides it.
    fn call_service(
        &self,
        input: ServiceInput,
    ) -> BoxFuture<'static, Result<ServiceOutput, ErrorObject>>;

    /// Fires a hook at every plugin that handles it; answers the combined result.
    fn fire_hook(
        &self,
        hook: String,
        payload: rmpv::Value,
        depth: u32,
    ) -> BoxFuture<'static, Result<rmpv::Value, ErrorObject>>;
}

/// Answers every call a plugin makes to plugd.
#[derive(Clone)]
pub struct Calls {
    store: Store,
    peers: Arc<dyn Peers>,
}

impl std::fmt::Debug for Calls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Calls").finish_non_exhaustive()
    }
}

impl Calls {
    /// Calls answered from `store` (the key-value store) and `peers` (services and hooks).
    pub fn new(store: Store, peers: Arc<dyn Peers>) -> Calls {
        Calls { store, peers }
    }

    /// Answers `request` from `plugin` with a complete response frame of at most `max` bytes.
    pub async fn answer(&self, plugin: &str, request: &Request, max: usize) -> Bytes {
        let id = request.id;
        let result = match request.method.as_str() {
            ServiceCall::NAME => match params::<ServiceCall>(request) {
                Ok(input) => self.peers.call_service(input).await.and_then(reply),
                Err(e) => Err(e),
            },
            HookFire::NAME => match params::<HookFire>(request) {
                Ok(p) => self
                    .peers
                    .fire_hook(p.hook, p.payload, p.depth)
                    .await
                    .and_then(reply),
                Err(e) => Err(e),
            },
            _ => handle(&self.store, plugin, request).await,
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
