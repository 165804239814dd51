//! The key-value store: plugin → supervisor calls. Each plugin sees only its own keys. Values
//! are bytes; every write gives the key a new version, which compare-and-set checks.

use super::Method;
use bytes::Bytes;
use serde::{Deserialize, Serialize};

/// `kv.get`: one key's value and version, or nil for both when absent (or expired).
#[derive(Debug)]
pub struct KvGet;

/// Parameters naming one key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KvKey {
    /// The key.
    pub key: String,
}

/// A value with its version, or nothing.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KvValue {
    /// The value, nil when the key is absent.
    pub value: Option<Bytes>,
    /// Its version, nil when absent.
    pub version: Option<u64>,
}

impl Method for KvGet {
    const NAME: &'static str = "kv.get";
    type Params = KvKey;
    type Result = KvValue;
}

/// `kv.set`: writes a value, optionally expiring after `ttl_ms`; answers the new version.
#[derive(Debug)]
pub struct KvSet;

/// Parameters of [`KvSet`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KvWrite {
    /// The key.
    pub key: String,
    /// The value.
    pub value: Bytes,
    /// Time to live in milliseconds; nil keeps it until deleted.
    #[serde(default)]
    pub ttl_ms: Option<u64>,
}

/// The version a write produced.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KvVersion {
    /// The key's new version.
    pub version: u64,
}

impl Method for KvSet {
    const NAME: &'static str = "kv.set";
    type Params = KvWrite;
    type Result = KvVersion;
}

/// `kv.delete`: removes a key; answers whether it existed.
#[derive(Debug)]
pub struct KvDelete;

/// Whether a key was deleted.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KvDeleted {
    /// True if the key existed.
    pub deleted: bool,
}

impl Method for KvDelete {
    const NAME: &'static str = "kv.delete";
    type Params = KvKey;
    type Result = KvDeleted;
}

/// `kv.list`: keys starting with `prefix`, in key order, at most `limit` (default 1000).
#[derive(Debug)]
pub struct KvList;

/// Parameters of [`KvList`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KvPrefix {
    /// The prefix (empty: every key).
    pub prefix: String,
    /// Most entries to return.
    #[serde(default)]
    pub limit: Option<u32>,
    /// List only keys after this one (the last key of the previous page).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub after: Option<String>,
}

/// One listed entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KvEntry {
    /// The key.
    pub key: String,
    /// The value.
    pub value: Bytes,
    /// Its version.
    pub version: u64,
}

/// The listed entries.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KvEntries {
    /// Entries in key order.
    pub entries: Vec<KvEntry>,
    /// More entries match: the answer stopped at its count or byte limit. Ask again with
    /// `after` set to the last key listed.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub more: bool,
}

impl Method for KvList {
    const NAME: &'static str = "kv.list";
    type Params = KvPrefix;
    type Result = KvEntries;
}

/// `kv.cas`: writes only if the key's version is still `expected` (nil: only if absent).
#[derive(Debug)]
pub struct KvCas;

/// Parameters of [`KvCas`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KvCasParams {
    /// The key.
    pub key: String,
    /// The version the caller read; nil means the key must not exist.
    pub expected: Option<u64>,
    /// The new value.
    pub value: Bytes,
    /// Time to live in milliseconds.
    #[serde(default)]
    pub ttl_ms: Option<u64>,
}

/// Whether the compare-and-set wrote, and the key's version now.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KvCasResult {
    /// True when the value was written.
    pub ok: bool,
    /// The key's version after the call (nil when absent).
    pub version: Option<u64>,
}

impl Method for KvCas {
    const NAME: &'static str = "kv.cas";
    type Params = KvCasParams;
    type Result = KvCasResult;
}
