//! The verbs that read what happened, once or following it live (`-f`): `logs` and
//! `events`, and how their lines print.

use super::verbs::{plugin_path, print_json, time_of};
use super::{Client, Failure};
use plugd_api::{Events, EventsQuery, Logs, LogsQuery, StreamEvent, StreamQuery};

fn print_event(event: &StreamEvent, json: bool) {
    if json {
        println!("{}", serde_json::to_string(event).unwrap_or_default());
        return;
    }
    match event {
        StreamEvent::Log {
            stream,
            line,
            at_ms,
            ..
        } => println!("{} {stream} {line}", time_of(*at_ms)),
        StreamEvent::Audit { event } => print_audit(event),
        StreamEvent::State {
            worker,
            plugin,
            state,
            reason,
            at_ms,
        } => println!(
            "{} {plugin} is {state} on {worker}{}",
            time_of(*at_ms),
            reason
                .as_ref()
                .map(|r| format!(": {r}"))
                .unwrap_or_default()
        ),
        StreamEvent::Lagged { missed } => {
            eprintln!("plugd: this client fell behind; {missed} events were skipped")
        }
        StreamEvent::Hello { .. } => {}
    }
}

fn print_audit(e: &plugd_api::AuditEvent) {
    println!(
        "{} #{} {} {} {}{}",
        time_of(u64::try_from(e.at_ms).unwrap_or_default()),
        e.id,
        e.actor,
        e.action,
        e.plugin.as_deref().unwrap_or("-"),
        if e.detail.is_empty() {
            String::new()
        } else {
            format!(": {}", e.detail)
        }
    );
}

pub(super) async fn logs(
    client: &Client,
    name: &str,
    follow: bool,
    lines: u32,
    json: bool,
) -> Result<(), Failure> {
    let what = format!("logs of {name}");
    // Following: subscribed before the history is read, so no line falls between the two.
    let mut subscription = match follow {
        true => {
            let query = StreamQuery {
                plugin: Some(name.to_owned()),
                kinds: Some("log".into()),
            };
            Some(client.subscribe(&what, &query).await?)
        }
        false => None,
    };
    let logs: Logs = client
        .get(
            &what,
            &format!("{}/logs", plugin_path(name)),
            &LogsQuery { lines: Some(lines) },
        )
        .await?;
    let Some(subscription) = subscription.as_mut() else {
        if json {
            print_json(&logs);
        } else {
            logs.lines
                .iter()
                .for_each(|l| print_log(&logs.plugin, l, json));
        }
        return Ok(());
    };
    let shown: std::collections::HashSet<(u64, u32, &str)> = logs
        .lines
        .iter()
        .map(|l| (l.at_ms, l.pid, l.line.as_str()))
        .collect();
    logs.lines
        .iter()
        .for_each(|l| print_log(&logs.plugin, l, json));
    loop {
        let event = subscription.next().await?;
        if let StreamEvent::Log {
            at_ms, pid, line, ..
        } = &event
        {
            if shown.contains(&(*at_ms, *pid, line.as_str())) {
                continue;
            }
        }
        print_event(&event, json);
    }
}

fn print_log(plugin: &str, l: &plugd_api::LogLine, json: bool) {
    print_event(
        &StreamEvent::Log {
            plugin: plugin.to_owned(),
            pid: l.pid,
            stream: l.stream.clone(),
            line: l.line.clone(),
            at_ms: l.at_ms,
        },
        json,
    );
}

pub(super) async fn events(
    client: &Client,
    plugin: Option<String>,
    follow: bool,
    limit: i64,
    json: bool,
) -> Result<(), Failure> {
    let what = "read the audit log";
    // Following: subscribed before the history is read, so no entry falls between the two.
    let mut subscription = match follow {
        true => {
            let query = StreamQuery {
                plugin: plugin.clone(),
                kinds: Some("audit".into()),
            };
            Some(client.subscribe(what, &query).await?)
        }
        false => None,
    };
    let query = EventsQuery {
        plugin,
        before: None,
        limit: Some(limit),
    };
    let page: Events = client.get(what, "/events", &query).await?;
    let Some(subscription) = subscription.as_mut() else {
        if json {
            print_json(&page);
        } else {
            page.events.iter().rev().for_each(print_audit);
        }
        return Ok(());
    };
    let newest = page.events.first().map_or(0, |e| e.id);
    for e in page.events.iter().rev() {
        print_event(&StreamEvent::Audit { event: e.clone() }, json);
    }
    loop {
        let event = subscription.next().await?;
        if matches!(&event, StreamEvent::Audit { event } if event.id <= newest) {
            continue;
        }
        print_event(&event, json);
    }
}
