//! `GET /admin/stream`: Server-Sent Events of plugin states on every worker, audit entries and
//! log lines. Each event's SSE `event:` field is its `kind`, its `data:` the JSON below.

use crate::cluster::AuditEvent;
use crate::plugins::State;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

/// One event of the live stream.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum StreamEvent {
    /// Sent first: the stream is live, and every event from now on will be delivered.
    Hello {
        /// The worker answering the stream (its log lines are the ones streamed).
        worker: String,
    },
    /// A plugin's state changed on a worker.
    State {
        /// The worker.
        worker: String,
        /// The plugin.
        plugin: String,
        /// Its new state there.
        state: State,
        /// Why it is not running, when it is not.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        reason: Option<String>,
        /// When the worker saw it.
        at_ms: u64,
    },
    /// An entry was added to the audit log.
    Audit {
        /// The entry.
        event: AuditEvent,
    },
    /// A plugin wrote a line (on the worker that answers the stream).
    Log {
        /// The plugin.
        plugin: String,
        /// The process that wrote it.
        pid: u32,
        /// `stdout` or `stderr`.
        stream: String,
        /// The text.
        line: String,
        /// When plugd read it.
        at_ms: u64,
    },
    /// This client fell behind: `missed` events were dropped for it rather than hold plugd
    /// back. Read the current state again (`GET /admin/plugins`) to catch up.
    Lagged {
        /// Events not delivered.
        missed: u64,
    },
}

impl StreamEvent {
    /// Which kind it is.
    pub fn kind(&self) -> StreamKind {
        match self {
            StreamEvent::Hello { .. } => StreamKind::Hello,
            StreamEvent::State { .. } => StreamKind::State,
            StreamEvent::Audit { .. } => StreamKind::Audit,
            StreamEvent::Log { .. } => StreamKind::Log,
            StreamEvent::Lagged { .. } => StreamKind::Lagged,
        }
    }

    /// The plugin it is about, if any.
    pub fn plugin(&self) -> Option<&str> {
        match self {
            StreamEvent::State { plugin, .. } | StreamEvent::Log { plugin, .. } => Some(plugin),
            StreamEvent::Audit { event } => event.plugin.as_deref(),
            StreamEvent::Hello { .. } | StreamEvent::Lagged { .. } => None,
        }
    }
}

/// The kinds of stream events.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum StreamKind {
    /// [`StreamEvent::Hello`] (always sent).
    Hello,
    /// [`StreamEvent::State`].
    State,
    /// [`StreamEvent::Audit`].
    Audit,
    /// [`StreamEvent::Log`].
    Log,
    /// [`StreamEvent::Lagged`] (always sent).
    Lagged,
}

impl StreamKind {
    /// The kind's name: the SSE `event:` field.
    pub fn name(self) -> &'static str {
        match self {
            StreamKind::Hello => "hello",
            StreamKind::State => "state",
            StreamKind::Audit => "audit",
            StreamKind::Log => "log",
            StreamKind::Lagged => "lagged",
        }
    }

    /// The kind named `name`.
    pub fn parse(name: &str) -> Option<StreamKind> {
        [
            StreamKind::Hello,
            StreamKind::State,
            StreamKind::Audit,
            StreamKind::Log,
            StreamKind::Lagged,
        ]
        .into_iter()
        .find(|k| k.name() == name)
    }
}

/// The query of `GET /admin/stream`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct StreamQuery {
    /// Only events about this plugin (and `hello` and `lagged`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub plugin: Option<String>,
    /// Only these kinds, comma-separated: `state`, `audit`, `log` (default all).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kinds: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_carry_their_kind_as_a_tag() {
        let e = StreamEvent::Lagged { missed: 3 };
        let json = serde_json::to_value(&e).expect("json");
        assert_eq!(json["kind"], "lagged");
        assert_eq!(json["missed"], 3);
        let back: StreamEvent = serde_json::from_value(json).expect("back");
        assert_eq!(back, e);
        for kind in ["hello", "state", "audit", "log", "lagged"] {
            assert_eq!(StreamKind::parse(kind).map(|k| k.name()), Some(kind));
        }
        assert_eq!(StreamKind::parse("nope"), None);
    }
}
