//! `plugd install`, `versions`, `rollback`, `promote`, `canary` and `download`: a plugin's
//! releases.

use super::verbs::{plugin_path, print_json, table, time_of};
use super::{Client, Failure};
use bytesize::ByteSize;
use plugd_api::{BundleQuery, CanaryReport, Installed, Released, RollbackQuery, Versions};
use std::path::PathBuf;
use std::time::Duration;

pub(super) async fn versions(client: &Client, name: &str, json: bool) -> Result<(), Failure> {
    let what = format!("versions of {name}");
    let list: Versions = client
        .get(&what, &format!("{}/versions", plugin_path(name)), &())
        .await?;
    if json {
        print_json(&list);
        return Ok(());
    }
    let rows: Vec<Vec<String>> = list
        .versions
        .iter()
        .map(|v| {
            let role = match (v.current, v.canary) {
                (true, _) => "stable",
                (_, true) => "canary",
                _ => "",
            };
            vec![
                v.version.clone(),
                role.to_owned(),
                v.sha256[..12].to_owned(),
                ByteSize(v.size).to_string(),
                time_of(u64::try_from(v.installed_ms).unwrap_or_default()),
                v.installed_by.clone(),
                v.workers.len().to_string(),
            ]
        })
        .collect();
    table(
        &[
            "VERSION",
            "ROLE",
            "SHA256",
            "SIZE",
            "INSTALLED",
            "BY",
            "WORKERS",
        ],
        &rows,
    );
    println!("the last {} versions are kept", list.keep);
    Ok(())
}

fn print_released(done: &Released, json: bool) {
    if json {
        print_json(done);
    } else {
        println!("{}: {}", done.plugin, done.detail);
    }
}

pub(super) async fn rollback(
    client: &Client,
    name: &str,
    to: Option<String>,
    json: bool,
) -> Result<(), Failure> {
    let what = format!("rollback {name}");
    let done: Released = client
        .post(
            &what,
            &format!("{}/rollback", plugin_path(name)),
            &RollbackQuery { to },
            Duration::ZERO,
        )
        .await?;
    print_released(&done, json);
    Ok(())
}

pub(super) async fn promote(client: &Client, name: &str, json: bool) -> Result<(), Failure> {
    let what = format!("promote {name}");
    let done: Released = client
        .post(
            &what,
            &format!("{}/promote", plugin_path(name)),
            &(),
            Duration::ZERO,
        )
        .await?;
    print_released(&done, json);
    Ok(())
}

pub(super) async fn canary(client: &Client, name: &str, json: bool) -> Result<(), Failure> {
    let what = format!("canary of {name}");
    let report: CanaryReport = client
        .get(&what, &format!("{}/canary", plugin_path(name)), &())
        .await?;
    if json {
        print_json(&report);
        return Ok(());
    }
    println!(
        "canary {} ({}) serves {} % beside stable {}{}",
        report.canary.version,
        &report.canary.sha256[..12],
        report.canary.percent,
        report.stable_version,
        if report.serving {
            ""
        } else {
            " (not serving on this worker)"
        }
    );
    let row = |side: &str, f: &plugd_api::CanaryFigures| {
        vec![
            side.to_owned(),
            f.requests.to_string(),
            f.errors.to_string(),
            format!("{:.2} %", f.error_ratio * 100.0),
            f.p99_ms.map_or("-".into(), |p| format!("{p:.2} ms")),
        ]
    };
    table(
        &["SIDE", "REQUESTS", "5XX", "5XX RATIO", "P99"],
        &[
            row("stable", &report.stable),
            row("canary", &report.candidate),
        ],
    );
    let t = &report.thresholds;
    println!(
        "over the last {:.0} s; rolled back past {}× the stable 5xx ratio (and {:.1} %) or {}× its p99, after {} requests",
        report.window_s,
        t.error_factor,
        t.min_error_ratio * 100.0,
        t.latency_factor,
        t.min_requests
    );
    Ok(())
}

pub(super) async fn download(
    client: &Client,
    name: &str,
    version: Option<String>,
    output: Option<PathBuf>,
    json: bool,
) -> Result<(), Failure> {
    let what = format!("download {name}");
    let query = BundleQuery {
        version: version.clone(),
    };
    let (bytes, etag) = client
        .download(&what, &format!("{}/bundle", plugin_path(name)), &query)
        .await?;
    let sum = {
        use sha2::Digest;
        hex::encode(sha2::Sha256::digest(&bytes))
    };
    if etag.as_deref() != Some(sum.as_str()) {
        return Err(Failure::error(format!(
            "{what}: the bundle's sha256 is {sum}, but plugd announced {}; not saved",
            etag.as_deref().unwrap_or("none")
        )));
    }
    let path = output.unwrap_or_else(|| {
        let kind = if bytes.starts_with(b"PK") {
            "zip"
        } else {
            "tar.gz"
        };
        PathBuf::from(format!("{name}-{}.{kind}", &sum[..12]))
    });
    std::fs::write(&path, &bytes)
        .map_err(|e| Failure::error(format!("{what}: cannot write {}: {e}", path.display())))?;
    if json {
        print_json(&serde_json::json!({ "path": path, "sha256": sum, "size": bytes.len() }));
    } else {
        println!(
            "saved {} ({}, sha256 {sum} verified)",
            path.display(),
            ByteSize(bytes.len() as u64)
        );
    }
    Ok(())
}

pub(super) async fn install(
    client: &Client,
    file: &std::path::Path,
    canary: Option<u8>,
    json: bool,
) -> Result<(), Failure> {
    let what = format!("install {}", file.display());
    let size = std::fs::metadata(file)
        .map_err(|e| Failure::usage(format!("{what}: {e}")))?
        .len();
    if size > plugd_api::plugins::MAX_BUNDLE {
        return Err(Failure::usage(format!(
            "{what}: the bundle is {} and plugd accepts at most {}",
            ByteSize(size),
            ByteSize(plugd_api::plugins::MAX_BUNDLE)
        )));
    }
    let bytes = std::fs::read(file).map_err(|e| Failure::usage(format!("{what}: {e}")))?;
    let query = plugd_api::InstallQuery { canary };
    let done: Installed = client.install(&what, bytes, &query).await?;
    if json {
        print_json(&done);
    } else if let Some(percent) = done.canary {
        println!(
            "canary {} {} serves {percent} % of its requests (sha256 {}); `plugd promote {}` or `plugd rollback {}` ends it",
            done.name, done.version, done.sha256, done.name, done.name
        );
    } else {
        let verb = if done.upgraded {
            "upgraded"
        } else {
            "installed"
        };
        println!(
            "{verb} {} {} (sha256 {})",
            done.name, done.version, done.sha256
        );
    }
    Ok(())
}
