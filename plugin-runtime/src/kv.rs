//! Calls from the plugin to the supervisor, and the key-value store built on them.

use crate::response::HttpError;
use crate::settings::{Current, Settings};
use bytes::Bytes;
use plugd_protocol::envelope::encode_request;
use plugd_protocol::message::hook::{HookFire, HookFireParams};
use plugd_protocol::message::kv::{
    KvCas, KvCasParams, KvDelete, KvGet, KvKey, KvList, KvPrefix, KvSet, KvWrite,
};
use plugd_protocol::message::service::{ServiceCall, ServiceInput};
use plugd_protocol::message::Method;
use plugd_protocol::outbox::Outbox;
use plugd_protocol::pending::Pending;
use plugd_protocol::{ErrorObject, Response as WireResponse};
use std::sync::Arc;
use std::time::Duration;

/// How long a call to the supervisor may take.
const CALL_TIMEOUT: Duration = Duration::from_secs(10);

/// Why a call to the supervisor failed.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum HostError {
    /// The connection to the supervisor is gone.
    #[error("the connection to the supervisor is closed")]
    Closed,
    /// No answer in time.
    #[error("the supervisor did not answer within {0:?}")]
    Timeout(Duration),
    /// The supervisor answered with an error.
    #[error("the supervisor refused: {0}")]
    Remote(ErrorObject),
    /// The answer could not be decoded.
    #[error("protocol error: {0}")]
    Protocol(String),
}

impl From<HostError> for HttpError {
    fn from(e: HostError) -> Self {
        HttpError::internal(e.to_string())
    }
}

/// Sends requests to the supervisor and matches their answers.
#[derive(Debug)]
pub(crate) struct Caller {
    out: Arc<Outbox>,
    pending: Pending<WireResponse>,
    max_frame: usize,
    /// The plugin's settings, as last delivered.
    pub(crate) settings: Current,
}

impl Caller {
    pub(crate) fn new(out: Arc<Outbox>, max_frame: usize, settings: Settings) -> Arc<Caller> {
        let current = Current::default();
        current.set(settings);
        Arc::new(Caller {
            out,
            // Id 0 was the handshake.
            pending: Pending::new(1),
            max_frame,
            settings: current,
        })
    }

    /// Delivers an answer from the supervisor to its caller.
    pub(crate) fn answer(&self, response: WireResponse) -> bool {
        self.pending.answer(response.id, response)
    }

    /// Fails every waiting call (the connection closed).
    pub(crate) fn close(&self) {
        drop(self.pending.drain());
    }

    async fn call<M: Method>(&self, params: &M::Params) -> Result<M::Result, HostError> {
        // A handler cancelled mid-call drops `call`, which removes its entry.
        let mut call = self.pending.register();
        let frame = encode_request::<M>(call.id(), params, self.max_frame)
            .map_err(|e| HostError::Protocol(e.to_string()))?;
        let answer = tokio::time::timeout(CALL_TIMEOUT, async {
            self.out.send(frame).await.map_err(|_| HostError::Closed)?;
            call.answer().await.ok_or(HostError::Closed)
        })
        .await;
        let response = answer.map_err(|_| HostError::Timeout(CALL_TIMEOUT))??;
        match response.decode_result::<M>() {
            Ok(Ok(result)) => Ok(result),
            Ok(Err(error)) => Err(HostError::Remote(error)),
            Err(e) => Err(HostError::Protocol(e.to_string())),
        }
    }
}

/// The supervisor as seen from a handler: the key-value store, other plugins' services, and
/// hooks. Calls made through it carry the depth of the call being handled, so loops between
/// plugins end at the supervisor's limit.
#[derive(Debug, Clone)]
pub struct Host {
    caller: Arc<Caller>,
    depth: u32,
}

impl Host {
    pub(crate) fn new(caller: Arc<Caller>, depth: u32) -> Host {
        Host { caller, depth }
    }

    /// The plugin's settings as they are now (a change arrives without a restart; see
    /// [`crate::Plugin::on_settings_changed`]).
    pub fn settings(&self) -> Settings {
        self.caller.settings.get()
    }

    /// The plugin's key-value store.
    pub fn kv(&self) -> Kv {
        Kv::new(self.caller.clone())
    }

    /// Calls service `name` of another plugin with a JSON argument; answers its JSON result.
    pub async fn call_service(
        &self,
        name: &str,
        payload: serde_json::Value,
    ) -> Result<serde_json::Value, HostError> {
        let params = ServiceInput {
            service: name.to_owned(),
            payload: rmpv::ext::to_value(&payload)
                .map_err(|e| HostError::Protocol(e.to_string()))?,
            depth: self.depth,
        };
        let out = self.caller.call::<ServiceCall>(&params).await?;
        serde_json::to_value(&out.value).map_err(|e| HostError::Protocol(e.to_string()))
    }

    /// Fires hook `name` at every plugin that handles it; answers the combined result, as
    /// `POST /hooks/{name}` would.
    pub async fn fire_hook(
        &self,
        name: &str,
        payload: serde_json::Value,
    ) -> Result<serde_json::Value, HostError> {
        let params = HookFireParams {
            hook: name.to_owned(),
            payload: rmpv::ext::to_value(&payload)
                .map_err(|e| HostError::Protocol(e.to_string()))?,
            depth: self.depth,
        };
        let out = self.caller.call::<HookFire>(&params).await?;
        serde_json::to_value(&out).map_err(|e| HostError::Protocol(e.to_string()))
    }
}

/// The plugin's own key-value store, kept by the supervisor (in its database, shared by every
/// instance and worker). Other plugins cannot see these keys.
#[derive(Debug, Clone)]
pub struct Kv {
    caller: Arc<Caller>,
}

/// One listed entry: key, value, version.
pub type KvEntry = (String, Bytes, u64);

impl Kv {
    pub(crate) fn new(caller: Arc<Caller>) -> Kv {
        Kv { caller }
    }

    /// The value of `key`, if set.
    pub async fn get(&self, key: &str) -> Result<Option<Bytes>, HostError> {
        Ok(self.get_versioned(key).await?.map(|(v, _)| v))
    }

    /// The value of `key` with its version (for [`Kv::compare_and_set`]), if set.
    pub async fn get_versioned(&self, key: &str) -> Result<Option<(Bytes, u64)>, HostError> {
        let r = self
            .caller
            .call::<KvGet>(&KvKey { key: key.into() })
            .await?;
        Ok(r.value.zip(r.version))
    }

    /// Sets `key`; returns its new version.
    pub async fn set(&self, key: &str, value: impl Into<Bytes>) -> Result<u64, HostError> {
        self.write(key, value.into(), None).await
    }

    /// Sets `key` until `ttl` has passed; returns its new version.
    pub async fn set_with_ttl(
        &self,
        key: &str,
        value: impl Into<Bytes>,
        ttl: Duration,
    ) -> Result<u64, HostError> {
        self.write(key, value.into(), Some(ttl)).await
    }

    async fn write(
        &self,
        key: &str,
        value: Bytes,
        ttl: Option<Duration>,
    ) -> Result<u64, HostError> {
        let params = KvWrite {
            key: key.into(),
            value,
            ttl_ms: ttl.map(|t| t.as_millis() as u64),
        };
        Ok(self.caller.call::<KvSet>(&params).await?.version)
    }

    /// Deletes `key`; true if it was set.
    pub async fn delete(&self, key: &str) -> Result<bool, HostError> {
        let r = self
            .caller
            .call::<KvDelete>(&KvKey { key: key.into() })
            .await?;
        Ok(r.deleted)
    }

    /// Keys starting with `prefix`, in key order: the first page (at most 1000 entries, and
    /// at most the supervisor's byte limit per answer; see [`Kv::list_page`] for the rest).
    pub async fn list(&self, prefix: &str) -> Result<Vec<KvEntry>, HostError> {
        Ok(self.list_page(prefix, None, None).await?.0)
    }

    /// One page of the keys starting with `prefix` that sort after `after`, at most `limit`
    /// entries; the flag says whether more follow (ask again with `after` = the last key).
    pub async fn list_page(
        &self,
        prefix: &str,
        after: Option<&str>,
        limit: Option<u32>,
    ) -> Result<(Vec<KvEntry>, bool), HostError> {
        let params = KvPrefix {
            prefix: prefix.into(),
            limit,
            after: after.map(str::to_owned),
        };
        let r = self.caller.call::<KvList>(&params).await?;
        let entries = r
            .entries
            .into_iter()
            .map(|e| (e.key, e.value, e.version))
            .collect();
        Ok((entries, r.more))
    }

    /// Writes `value` only if `key` is still at version `expected` (`None`: only if unset).
    /// `Ok(Ok(version))` when written; `Ok(Err(current))` when another write came first.
    pub async fn compare_and_set(
        &self,
        key: &str,
        expected: Option<u64>,
        value: impl Into<Bytes>,
    ) -> Result<Result<u64, Option<u64>>, HostError> {
        let params = KvCasParams {
            key: key.into(),
            expected,
            value: value.into(),
            ttl_ms: None,
        };
        let r = self.caller.call::<KvCas>(&params).await?;
        Ok(match (r.ok, r.version) {
            (true, Some(v)) => Ok(v),
            (_, current) => Err(current),
        })
    }
}
