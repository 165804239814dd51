//! Example plugin `preview`: a `first`-mode hook that previews files it understands.
//!
//! A host fires `file.preview` with `{"mime": …, "content": …}`; this plugin answers for
//! `text/markdown` with the HTML rendering and passes on anything else, so another preview
//! provider (or none) can answer. It also offers `markdown.render` as a service to other
//! plugins.

use plugd_runtime::{HookEvent, HookMode, HookReply, Plugin, ServiceEvent};
use serde_json::{json, Value};

fn render(markdown: &str) -> String {
    let mut html = String::new();
    pulldown_cmark::html::push_html(&mut html, pulldown_cmark::Parser::new(markdown));
    html
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), plugd_runtime::Error> {
    Plugin::new("preview", env!("CARGO_PKG_VERSION"))
        .hook(
            "file.preview",
            HookMode::First,
            10,
            |event: HookEvent, _| async move {
                let markdown = event.payload["mime"] == "text/markdown";
                match event.payload["content"].as_str() {
                    Some(text) if markdown => HookReply::Value(json!({ "html": render(text) })),
                    _ => HookReply::Pass,
                }
            },
        )
        .service("markdown.render", |event: ServiceEvent, _| async move {
            match event.payload.as_str() {
                Some(text) => Ok(Value::String(render(text))),
                None => Err("markdown.render takes a string".to_owned()),
            }
        })
        .run()
        .await
}
