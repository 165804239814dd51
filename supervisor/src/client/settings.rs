//! `plugd settings NAME` and `plugd set NAME KEY=VALUE…`: a plugin's settings as a table (a
//! secret only as set or unset), and changes to them.

use super::verbs::{plugin_path, print_json, table};
use super::{Client, Failure};
use plugd_api::{Settings, SettingsAnswer, SettingsChange, Source};

pub(super) async fn show(client: &Client, name: &str, json: bool) -> Result<(), Failure> {
    let what = format!("settings of {name}");
    let view: Settings = client
        .get(&what, &format!("{}/settings", plugin_path(name)), &())
        .await?;
    if json {
        print_json(&view);
        return Ok(());
    }
    let rows: Vec<Vec<String>> = view
        .settings
        .iter()
        .map(|s| {
            let value = match (&s.value, s.secret, s.source) {
                (_, true, Source::Unset) => "(secret, unset)".to_owned(),
                (_, true, _) => "(secret, set)".to_owned(),
                (Some(v), _, _) => v.to_string(),
                (None, _, _) => "-".to_owned(),
            };
            let source = match s.source {
                Source::Set => "set",
                Source::Default => "default",
                Source::Unset if s.required => "MISSING",
                Source::Unset => "unset",
            };
            let mut kind = s.kind.clone();
            if s.restart {
                kind.push_str(" (restart)");
            }
            vec![
                s.name.clone(),
                value,
                kind,
                source.to_owned(),
                s.description.clone(),
            ]
        })
        .collect();
    table(
        &["SETTING", "VALUE", "TYPE", "SOURCE", "DESCRIPTION"],
        &rows,
    );
    println!("generation {}", view.generation);
    if !view.missing.is_empty() {
        println!("missing required settings: {}", view.missing.join(", "));
    }
    Ok(())
}

/// `KEY=VALUE` as a setting: VALUE as JSON when it is JSON, else as text.
fn parse_assignment(pair: &str) -> Result<(String, serde_json::Value), Failure> {
    let (key, value) = pair
        .split_once('=')
        .ok_or_else(|| Failure::usage(format!("{pair:?} is not KEY=VALUE")))?;
    if key.is_empty() {
        return Err(Failure::usage(format!("{pair:?} names no setting")));
    }
    let value =
        serde_json::from_str(value).unwrap_or_else(|_| serde_json::Value::String(value.to_owned()));
    Ok((key.to_owned(), value))
}

pub(super) async fn set(
    client: &Client,
    name: &str,
    pairs: &[String],
    generation: Option<i64>,
    json: bool,
) -> Result<(), Failure> {
    let body: SettingsChange = pairs
        .iter()
        .map(|p| parse_assignment(p))
        .collect::<Result<_, _>>()?;
    let what = format!("set the settings of {name}");
    let answer: SettingsAnswer = client
        .patch_if(
            &what,
            &format!("{}/settings", plugin_path(name)),
            &body,
            generation,
        )
        .await?;
    if json {
        print_json(&answer);
    } else {
        println!("{}", answer.detail);
    }
    Ok(())
}
