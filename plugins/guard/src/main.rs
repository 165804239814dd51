//! Example plugin `guard`: document hooks a host application fires around saving.
//!
//! - `document.render` (`filter`): tidies the document's text (trailing spaces, runs of blank
//!   lines) and passes it on to the next filter.
//! - `document.before_save` (`veto`, fail-closed): refuses an empty title or a body over the
//!   size limit, with a reason the host can show; if this plugin is down, saves are refused
//!   rather than let through unchecked.

use plugd_runtime::{HookEvent, HookMode, HookReply, Plugin};
use serde_json::Value;

const MAX_BODY: usize = 100_000;

fn tidy(text: &str) -> String {
    let mut out = Vec::new();
    let mut blank = 0;
    for line in text.lines().map(str::trim_end) {
        blank = if line.is_empty() { blank + 1 } else { 0 };
        if blank <= 1 {
            out.push(line);
        }
    }
    out.join("\n")
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), plugd_runtime::Error> {
    Plugin::new("guard", env!("CARGO_PKG_VERSION"))
        .hook(
            "document.render",
            HookMode::Filter,
            50,
            |event: HookEvent, _| async move {
                let mut doc = event.payload;
                if let Some(body) = doc.get("body").and_then(Value::as_str).map(tidy) {
                    doc["body"] = Value::String(body);
                }
                HookReply::Value(doc)
            },
        )
        .hook(
            "document.before_save",
            HookMode::Veto,
            10,
            |event: HookEvent, _| async move {
                let title = event.payload["title"]
                    .as_str()
                    .unwrap_or_default()
                    .trim()
                    .to_owned();
                let size = event.payload["body"].as_str().map_or(0, str::len);
                if title.is_empty() {
                    HookReply::Reject("a document needs a title".into())
                } else if size > MAX_BODY {
                    HookReply::Reject(format!(
                        "the body is {size} bytes; at most {MAX_BODY} are allowed"
                    ))
                } else {
                    HookReply::Pass
                }
            },
        )
        .fail_closed()
        .run()
        .await
}
