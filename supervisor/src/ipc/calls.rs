//! Answers the calls a plugin makes to plugd: its key-value store (`kv.*`, each plugin confined
//! to its own keys), other plugins' services (`service.call`) and hooks (`hook.fire`). The
//! calling plugin's name comes from its connection, never from the request.
//!
//! Services and hooks reach other plugins, which this layer does not know: the supervisor hands
//! in a [`Peers`] that does.
//!
//! Bounds on what a plugin may keep: a value is at most [`MAX_KV_VALUE`] bytes, a plugin's store
//! at most [`KV_QUOTA`] (keys and bytes), and one listing answer at most [`MAX_KV_LIST_BYTES`]
//! (the rest is paged with `after`). Hooks under `plugd.` are plugd's own: a plugin may handle
//! them but never fire them.

use crate::store::kv::{KvQuota, OverQuota};
use crate::store::Store;
use bytes::Bytes;
use futures_util::future::BoxFuture;
use plugd_protocol::envelope::{encode_error, encode_response, encode_response_packed};
use plugd_protocol::message::hook::HookFire;
use plugd_protocol::message::kv::{
    KvCas, KvCasResult, KvDelete, KvDeleted, KvEntries, KvEntry, KvGet, KvList, KvSet, KvValue,
    KvVersion,
};
use plugd_protocol::message::service::{ServiceCall, ServiceCallRaw};
use plugd_protocol::message::Method;
use plugd_protocol::{codes, ErrorObject, Request};
use serde::Serialize;
use std::sync::Arc;
use std::time::Duration;

/// Longest key accepted.
pub const MAX_KEY: usize = 512;

/// Largest value a plugin may store under one key: 1 MiB.
pub const MAX_KV_VALUE: usize = 1024 * 1024;

/// How much one plugin may keep in its key-value store: 10,000 keys and 64 MiB of values.
pub const KV_QUOTA: KvQuota = KvQuota {
    keys: 10_000,
    bytes: 64 * 1024 * 1024,
};

/// Most bytes of keys and values in one `kv.list` answer: 4 MiB (and never more than half a
/// frame). A listing that stops there says `more`; the plugin asks again with `after`.
pub const MAX_KV_LIST_BYTES: usize = 4 * 1024 * 1024;

/// Hook names under this prefix are plugd's lifecycle hooks: fired only by plugd.
pub const RESERVED_PREFIX: &str = "plugd.";

/// The other plugins, as a plugin's calls reach them.
pub trait Peers: Send + Sync + 'static {
    /// Calls a service on the running plugin that provides it; answers the provider's result
    /// (a [`ServiceOutput`](plugd_protocol::message::service::ServiceOutput)) as checked raw
    /// MessagePack, passed on to the caller as it is.
    fn call_service(&self, input: ServiceCallRaw)
        -> BoxFuture<'static, Result<Bytes, ErrorObject>>;

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

    /// Whether `method` is one this answers (anything else is `METHOD_NOT_FOUND` at once).
    pub fn handles(method: &str) -> bool {
        matches!(
            method,
            ServiceCall::NAME
                | HookFire::NAME
                | KvGet::NAME
                | KvSet::NAME
                | KvDelete::NAME
                | KvList::NAME
                | KvCas::NAME
        )
    }

    /// Answers `request` from `plugin` with a complete response frame of at most `max` bytes.
    pub async fn answer(&self, plugin: &str, request: &Request, max: usize) -> Bytes {
        let id = request.id;
        let result = match request.method.as_str() {
            ServiceCall::NAME => match ServiceCallRaw::decode(&request.params) {
                Ok(input) => self.peers.call_service(input).await.map(reply_raw),
                Err(e) => Err(ErrorObject::new(codes::INVALID_PARAMS, e.to_string())),
            },
            HookFire::NAME => match params::<HookFire>(request) {
                Ok(p) if p.hook.starts_with(RESERVED_PREFIX) => Err(ErrorObject::new(
                    codes::INVALID_PARAMS,
                    format!(
                        "hook {:?} is reserved: hooks under {RESERVED_PREFIX:?} are fired by plugd only",
                        p.hook
                    ),
                )),
                Ok(p) => self
                    .peers
                    .fire_hook(p.hook, p.payload, p.depth)
                    .await
                    .and_then(reply),
                Err(e) => Err(e),
            },
            // Boxed: the store's futures are large, and this future is moved into a task per
            // call; boxed, the calls that do not touch the store do not copy them.
            _ => Box::pin(handle(&self.store, plugin, request, max)).await,
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

/// An answer whose result is raw MessagePack checked already.
fn reply_raw(result: Bytes) -> Encoder {
    Box::new(move |id, max| {
        encode_response_packed(id, 32 + result.len(), max, |buf| {
            buf.extend_from_slice(&result)
        })
    })
}

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

fn check_value(value: &[u8]) -> Result<(), ErrorObject> {
    if value.len() > MAX_KV_VALUE {
        return Err(ErrorObject::new(
            codes::INVALID_PARAMS,
            format!(
                "a value may be at most {MAX_KV_VALUE} bytes; this one is {}",
                value.len()
            ),
        ));
    }
    Ok(())
}

fn store_failed(e: anyhow::Error) -> ErrorObject {
    if let Some(over) = e.downcast_ref::<OverQuota>() {
        return ErrorObject::new(codes::QUOTA_EXCEEDED, over.to_string());
    }
    ErrorObject::new(codes::INTERNAL, format!("the store is unavailable: {e:#}"))
}

fn version(v: i64) -> u64 {
    u64::try_from(v).unwrap_or(0)
}

async fn handle(
    store: &Store,
    plugin: &str,
    request: &Request,
    max: usize,
) -> Result<Encoder, ErrorObject> {
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
            check_value(&p.value)?;
            let ttl = p.ttl_ms.map(Duration::from_millis);
            let v = store
                .kv_set(plugin, &p.key, &p.value, ttl, KV_QUOTA)
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
            let limit = i64::from(p.limit.unwrap_or(1000).clamp(1, 10_000));
            let budget = MAX_KV_LIST_BYTES.min(max / 2);
            let page = store
                .kv_list(plugin, &p.prefix, p.after.as_deref(), limit, budget)
                .await
                .map_err(store_failed)?;
            reply(KvEntries {
                more: page.more,
                entries: page
                    .items
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
            check_value(&p.value)?;
            let expected = p.expected.map(|v| i64::try_from(v).unwrap_or(i64::MAX));
            let ttl = p.ttl_ms.map(Duration::from_millis);
            let (ok, v) = store
                .kv_cas(plugin, &p.key, expected, &p.value, ttl, KV_QUOTA)
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
