//! The hook dispatcher: a hook fired by a host application (`POST /hooks/{hook}`), by a plugin
//! (`hook.fire`) or by plugd itself (`plugd.plugin.*`) is answered by every plugin that declared
//! it, combined by the hook's mode.
//!
//! - `collect`: every handler at once; the answer lists each plugin's result or error.
//! - `filter`: handlers in priority order, each given the previous output; the last output wins.
//! - `first`: handlers in priority order; the first that answers with a value wins.
//! - `veto`: handlers in priority order; the first rejection wins and names its plugin.
//!
//! Each handler call has the hook deadline; a handler that errors, times out or whose plugin is
//! down is reported (`collect`), skipped (`filter`, `first`), or for `veto` ignored (fail-open,
//! the default) or counted as a rejection (fail-closed, when the handler declared so). A hook
//! call never waits longer than its deadline per handler.
//!
//! Payloads are checked before any plugin sees them: one nested deeper than
//! [`MAX_PAYLOAD_DEPTH`] is refused (a plugin's decoder would have to cut the connection over
//! it), and a handler's answer nested deeper counts as that handler's error.

use super::instance::Instance;
use super::reconcile::{PluginMap, PluginState};
use crate::ipc::CallError;
use futures_util::stream::{FuturesUnordered, StreamExt};
use plugd_protocol::depth::{value_depth, MAX_PAYLOAD_DEPTH};
use plugd_protocol::message::handshake::HookMode;
use plugd_protocol::message::hook::{HookCall, HookInput, HookOutput};
use serde::ser::{Serialize, SerializeMap, Serializer};
use serde_json::value::RawValue;
use serde_json::{json, Value};
use std::sync::Arc;
use std::time::Duration;

/// Deepest chain of hook and service calls; deeper calls fail, so loops end.
pub const MAX_DEPTH: u32 = 8;

/// Why a hook was not fired at all.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FireError {
    /// The chain of hook and service calls is deeper than [`MAX_DEPTH`].
    #[error("call chain deeper than {MAX_DEPTH} (a loop between plugins?)")]
    ChainTooDeep,
    /// The payload nests deeper than [`MAX_PAYLOAD_DEPTH`].
    #[error("the payload nests {0} levels deep; at most {MAX_PAYLOAD_DEPTH} are allowed")]
    PayloadTooDeep(usize),
}

/// One plugin's handler for a hook: the plugin, its declaration, its instance if running.
struct Handler<'a> {
    plugin: &'a str,
    mode: HookMode,
    priority: i32,
    fail_closed: bool,
    instance: Option<Arc<Instance>>,
}

fn handlers<'a>(plugins: &'a PluginMap, hook: &str) -> Vec<Handler<'a>> {
    let mut found: Vec<Handler<'a>> = plugins
        .iter()
        .filter_map(|(name, slot)| {
            let (mode, priority, fail_closed) = slot.with_hooks(|hooks| {
                let d = hooks.iter().find(|d| d.name == hook)?;
                Some((d.mode, d.priority, d.fail_closed))
            })?;
            let instance = match &*slot.state() {
                PluginState::Ready(i) => Some(i.clone()),
                _ => None,
            };
            Some(Handler {
                plugin: name,
                mode,
                priority,
                fail_closed,
                instance,
            })
        })
        .collect();
    found.sort_by(|a, b| (a.priority, a.plugin).cmp(&(b.priority, b.plugin)));
    found
}

async fn call(
    handler: &Handler<'_>,
    hook: &str,
    payload: &rmpv::Value,
    depth: u32,
    timeout: Duration,
) -> Result<HookOutput, String> {
    let params = encode_input(hook, payload.clone(), depth, timeout)?;
    call_encoded(handler, &params, Some(timeout)).await
}

/// A hook call's parameters, encoded.
fn encode_input(
    hook: &str,
    payload: rmpv::Value,
    depth: u32,
    timeout: Duration,
) -> Result<Vec<u8>, String> {
    let input = HookInput {
        hook: hook.to_owned(),
        payload,
        depth,
        deadline_unix_ms: plugd_protocol::time::deadline_after(timeout),
    };
    rmp_serde::to_vec_named(&input).map_err(|e| format!("cannot encode the call: {e}"))
}

/// Calls one handler with the hook's parameters encoded already: a `collect` hook encodes
/// them once for all its handlers, which it calls at the same time.
async fn call_encoded(
    handler: &Handler<'_>,
    params: &[u8],
    timeout: Option<Duration>,
) -> Result<HookOutput, String> {
    let Some(instance) = &handler.instance else {
        return Err(format!("plugin {:?} is down", handler.plugin));
    };
    let output = instance
        .conn
        .call_encoded::<HookCall>(params, timeout)
        .await
        .map_err(|e| match e {
            CallError::Timeout(after) => format!("no answer within {after:?}"),
            other => other.to_string(),
        })?;
    let deep = output.value.as_ref().map_or(0, value_depth);
    if deep > MAX_PAYLOAD_DEPTH {
        return Err(format!(
            "answered a value nested {deep} levels deep; at most {MAX_PAYLOAD_DEPTH} are allowed"
        ));
    }
    Ok(output)
}

/// Calls every handler at once with the same encoded parameters and gathers their answers in
/// the handlers' order. They share one deadline (one timer, not one per handler): a handler
/// that has not answered by then gets an error, and its call is dropped, which cancels it.
async fn collect_answers(
    handlers: &[Handler<'_>],
    params: &Result<Vec<u8>, String>,
    timeout: Duration,
) -> Vec<Result<HookOutput, String>> {
    let mut answers: Vec<Option<Result<HookOutput, String>>> =
        handlers.iter().map(|_| None).collect();
    {
        // Each call is polled only when it was woken (`join_all` polls every call whenever
        // one is woken: ten answers would cost a hundred polls).
        let mut calls: FuturesUnordered<_> = handlers
            .iter()
            .enumerate()
            .map(|(i, h)| async move {
                let answer = match params {
                    Ok(params) => call_encoded(h, params, None).await,
                    Err(e) => Err(e.clone()),
                };
                (i, answer)
            })
            .collect();
        let deadline = tokio::time::sleep(timeout);
        tokio::pin!(deadline);
        loop {
            tokio::select! {
                next = calls.next() => match next {
                    Some((i, answer)) => answers[i] = Some(answer),
                    None => break,
                },
                () = &mut deadline => break,
            }
        }
    }
    answers
        .into_iter()
        .map(|a| a.unwrap_or_else(|| Err(format!("no answer within {timeout:?}"))))
        .collect()
}

fn to_json(v: &rmpv::Value) -> Value {
    serde_json::to_value(v).unwrap_or(Value::Null)
}

/// A hook's combined answer: `hook`, `mode`, `handlers` (how many were called), `skipped`, and
/// the mode's own fields (`results` for `collect`). It serializes to the JSON the API answers
/// with; a `collect` hook's results are written from the handlers' values straight to JSON
/// text, with no `serde_json::Value` tree built and dropped for each.
#[derive(Debug)]
pub struct Fired {
    hook: String,
    mode: Option<HookMode>,
    handlers: usize,
    skipped: Vec<Value>,
    outcome: Outcome,
}

#[derive(Debug)]
enum Outcome {
    /// Each handler's result, in the handlers' order.
    Collect(Vec<Collected>),
    /// The fields of a `filter`, `first` or `veto` answer.
    Fields(serde_json::Map<String, Value>),
}

/// One `collect` handler's entry: its value as JSON text (`null` when it answered none, or one
/// JSON cannot carry), or its error.
#[derive(Debug, serde::Serialize)]
struct Collected {
    plugin: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    value: Option<Box<RawValue>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<String>,
}

impl Collected {
    fn new(plugin: &str, answer: Result<HookOutput, String>) -> Collected {
        let (value, error) = match answer {
            Ok(out) => {
                let json = out
                    .value
                    .as_ref()
                    .and_then(|v| serde_json::value::to_raw_value(v).ok());
                (
                    Some(json.unwrap_or_else(|| RawValue::NULL.to_owned())),
                    None,
                )
            }
            Err(e) => (None, Some(e)),
        };
        Collected {
            plugin: plugin.to_owned(),
            value,
            error,
        }
    }
}

impl Fired {
    /// The answer as a JSON value (for a MessagePack answer, or a plugin that fired the hook).
    pub fn to_value(&self) -> Value {
        serde_json::to_value(self).unwrap_or(Value::Null)
    }
}

impl Serialize for Fired {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut map = serializer.serialize_map(None)?;
        map.serialize_entry("hook", &self.hook)?;
        map.serialize_entry("handlers", &self.handlers)?;
        // A hook nobody handles has no mode, and so nothing skipped.
        if let Some(mode) = &self.mode {
            map.serialize_entry("mode", mode)?;
            map.serialize_entry("skipped", &self.skipped)?;
        }
        match &self.outcome {
            Outcome::Collect(results) => map.serialize_entry("results", results)?,
            Outcome::Fields(fields) => {
                for (k, v) in fields {
                    map.serialize_entry(k, v)?;
                }
            }
        }
        map.end()
    }
}

/// Fires `hook` with `payload` and combines the answers by the hook's mode.
pub async fn fire(
    plugins: &PluginMap,
    hook: &str,
    payload: rmpv::Value,
    depth: u32,
    timeout: Duration,
) -> Result<Fired, FireError> {
    if depth > MAX_DEPTH {
        return Err(FireError::ChainTooDeep);
    }
    let deep = value_depth(&payload);
    if deep > MAX_PAYLOAD_DEPTH {
        return Err(FireError::PayloadTooDeep(deep));
    }
    let all = handlers(plugins, hook);
    let Some(mode) = all.first().map(|h| h.mode) else {
        return Ok(Fired {
            hook: hook.to_owned(),
            mode: None,
            handlers: 0,
            skipped: Vec::new(),
            outcome: Outcome::Collect(Vec::new()),
        });
    };
    let mut skipped: Vec<Value> = Vec::new();
    let mut handlers = Vec::new();
    for h in all {
        if h.mode == mode {
            handlers.push(h);
        } else {
            skipped.push(json!({
                "plugin": h.plugin,
                "error": format!("declares mode {:?} but the hook's mode is {:?}", h.mode, mode),
            }));
        }
    }
    let count = handlers.len();
    let depth = depth + 1;
    let outcome = match mode {
        HookMode::Collect => {
            let params = encode_input(hook, payload, depth, timeout);
            let answers = collect_answers(&handlers, &params, timeout).await;
            let results = handlers
                .iter()
                .zip(answers)
                .map(|(h, answer)| Collected::new(h.plugin, answer))
                .collect();
            Outcome::Collect(results)
        }
        HookMode::Filter => {
            let mut value = payload;
            let mut applied = Vec::new();
            for h in &handlers {
                match call(h, hook, &value, depth, timeout).await {
                    Ok(out) => {
                        if let Some(v) = out.value {
                            value = v;
                        }
                        applied.push(h.plugin);
                    }
                    Err(e) => skipped.push(json!({ "plugin": h.plugin, "error": e })),
                }
            }
            fields(json!({ "value": to_json(&value), "applied": applied }))
        }
        HookMode::First => {
            let mut winner = json!({ "value": null, "plugin": null });
            for h in &handlers {
                match call(h, hook, &payload, depth, timeout).await {
                    Ok(HookOutput { value: Some(v), .. }) if !v.is_nil() => {
                        winner = json!({ "value": to_json(&v), "plugin": h.plugin });
                        break;
                    }
                    Ok(_) => {}
                    Err(e) => skipped.push(json!({ "plugin": h.plugin, "error": e })),
                }
            }
            fields(winner)
        }
        HookMode::Veto => {
            let mut verdict = json!({ "allowed": true, "rejected_by": null });
            for h in &handlers {
                let rejection = match call(h, hook, &payload, depth, timeout).await {
                    Ok(out) => out.reject,
                    Err(e) if h.fail_closed => {
                        Some(format!("failed, and its veto fails closed: {e}"))
                    }
                    Err(e) => {
                        skipped.push(json!({ "plugin": h.plugin, "error": e }));
                        None
                    }
                };
                if let Some(reason) = rejection {
                    verdict = json!({
                        "allowed": false,
                        "rejected_by": { "plugin": h.plugin, "reason": reason },
                    });
                    break;
                }
            }
            fields(verdict)
        }
    };
    Ok(Fired {
        hook: hook.to_owned(),
        mode: Some(mode),
        handlers: count,
        skipped,
        outcome,
    })
}

/// A `filter`, `first` or `veto` answer's fields (each is built as a JSON object).
fn fields(object: Value) -> Outcome {
    match object {
        Value::Object(fields) => Outcome::Fields(fields),
        _ => Outcome::Fields(serde_json::Map::new()),
    }
}

/// Fires one of the supervisor's own hooks at the plugins that handle it, without waiting for
/// the answers.
pub fn fire_lifecycle(registry: &crate::supervise::Registry, hook: &'static str, payload: Value) {
    let plugins = registry.snapshot();
    let timeout = registry.hook_timeout();
    tokio::spawn(async move {
        let payload = rmpv::ext::to_value(&payload).unwrap_or(rmpv::Value::Nil);
        if let Err(e) = fire(&plugins, hook, payload, 0, timeout).await {
            tracing::warn!(hook, "lifecycle hook: {e}");
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn collected_values_are_written_as_json_and_what_json_cannot_carry_is_null() {
        let ok = |value| {
            Ok(HookOutput {
                value,
                reject: None,
            })
        };
        let nested = rmpv::Value::Map(vec![(
            "n".into(),
            rmpv::Value::Array(vec![1.into(), "two".into(), rmpv::Value::Nil]),
        )]);
        // A map keyed by an array has no JSON form.
        let unkeyable = rmpv::Value::Map(vec![(rmpv::Value::Array(vec![]), 1.into())]);
        let fired = Fired {
            hook: "h".into(),
            mode: Some(HookMode::Collect),
            handlers: 4,
            skipped: Vec::new(),
            outcome: Outcome::Collect(vec![
                Collected::new("a", ok(Some(nested))),
                Collected::new("b", ok(None)),
                Collected::new("c", ok(Some(unkeyable))),
                Collected::new("d", Err("no answer within 1s".into())),
            ]),
        };
        let text: Value =
            serde_json::from_slice(&serde_json::to_vec(&fired).expect("json")).expect("valid JSON");
        let expected = json!({
            "hook": "h", "mode": "collect", "handlers": 4, "skipped": [],
            "results": [
                { "plugin": "a", "value": { "n": [1, "two", null] } },
                { "plugin": "b", "value": null },
                { "plugin": "c", "value": null },
                { "plugin": "d", "error": "no answer within 1s" },
            ],
        });
        assert_eq!(text, expected);
        assert_eq!(fired.to_value(), expected, "the value form says the same");
    }
}
