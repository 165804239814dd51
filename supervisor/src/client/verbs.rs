//! The client verbs of the command line and how they print: aligned tables for people, the
//! server's JSON with `--json` for scripts.

use super::{follow, Client, Failure};
use bytesize::ByteSize;
use clap::{Args, Subcommand};
use plugd_api::{
    Accepted, Plugin, PluginList, Stats, ToggleAnswer, ToggleQuery, Uninstalled, Workers,
};
use serde::Serialize;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

/// Where plugd is and who is asking; shared by every client verb.
#[derive(Args)]
pub struct ClientArgs {
    /// plugd's address [default: http://$PLUGD_LISTEN, else http://127.0.0.1:8080].
    #[arg(long, env = "PLUGD_URL", global = true)]
    url: Option<String>,
    /// An admin token (a viewer token for reads).
    #[arg(long, env = "PLUGD_TOKEN", global = true, hide_env_values = true)]
    token: Option<String>,
    /// Print the server's JSON instead of a table.
    #[arg(long, global = true)]
    json: bool,
}

impl std::fmt::Debug for ClientArgs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The token never appears in a debug print.
        f.debug_struct("ClientArgs")
            .field("url", &self.url)
            .field("token", &self.token.as_ref().map(|_| "<redacted>"))
            .field("json", &self.json)
            .finish()
    }
}

/// The client verbs.
#[derive(Debug, Subcommand)]
pub enum Verb {
    /// List the plugins: state, workers ready, restarts, memory, CPU.
    Plugins,
    /// Show one plugin: state on every worker, routes, hooks, limits, usage.
    Plugin {
        /// The plugin's name.
        name: String,
    },
    /// Enable a plugin on every worker.
    Enable(Toggle),
    /// Disable a plugin on every worker.
    Disable(Toggle),
    /// Reload a plugin blue/green (re-read its manifest and program).
    Reload {
        /// The plugin's name.
        name: String,
    },
    /// Restart a plugin (also the way out of `failed`).
    Restart {
        /// The plugin's name.
        name: String,
    },
    /// Install or upgrade a plugin from a bundle (.zip or .tar.gz).
    Install {
        /// The bundle file.
        file: PathBuf,
        /// Start it as a canary beside the installed version, serving this percentage (1-99)
        /// of its HTTP requests, instead of replacing it.
        #[arg(long, value_name = "PERCENT")]
        canary: Option<u8>,
    },
    /// List a plugin's kept versions, newest first, and the workers running each.
    Versions {
        /// The plugin's name.
        name: String,
    },
    /// Make an earlier version the one every worker runs (by default the one installed before
    /// the stable one); during a canary, end the canary.
    Rollback {
        /// The plugin's name.
        name: String,
        /// The version (or sha256 prefix) to go back to.
        #[arg(long)]
        to: Option<String>,
    },
    /// Make a plugin's canary its stable version on every worker.
    Promote {
        /// The plugin's name.
        name: String,
    },
    /// Show a plugin's canary and how it fares against the stable version on this worker.
    Canary {
        /// The plugin's name.
        name: String,
    },
    /// Download a kept bundle and check it against its sha256.
    Download {
        /// The plugin's name.
        name: String,
        /// The version (or sha256 prefix); the stable one by default.
        #[arg(long)]
        version: Option<String>,
        /// Where to write it (default: NAME-VERSION.bundle in the current directory).
        #[arg(short, long)]
        output: Option<PathBuf>,
    },
    /// Uninstall a plugin.
    Uninstall {
        /// The plugin's name.
        name: String,
    },
    /// Show a plugin's recent output; -f follows it.
    Logs {
        /// The plugin's name.
        name: String,
        /// Keep printing new lines as they come.
        #[arg(short, long)]
        follow: bool,
        /// How many of the latest lines.
        #[arg(short = 'n', long, default_value_t = 50)]
        lines: u32,
    },
    /// Show the audit log, newest last; -f follows it.
    Events {
        /// Only this plugin's entries.
        #[arg(long)]
        plugin: Option<String>,
        /// Keep printing new entries as they come.
        #[arg(short, long)]
        follow: bool,
        /// How many of the latest entries.
        #[arg(short = 'n', long, default_value_t = 20)]
        limit: i64,
    },
    /// Show a plugin's settings: value (never a secret's), type, where the value comes from.
    Settings {
        /// The plugin's name.
        name: String,
    },
    /// Change a plugin's settings on every worker: KEY=VALUE, where VALUE is JSON (3, true,
    /// ["a","b"]) or else text; KEY=null returns a setting to its default.
    Set {
        /// The plugin's name.
        name: String,
        /// The settings to change, as KEY=VALUE.
        #[arg(required = true, value_name = "KEY=VALUE")]
        values: Vec<String>,
        /// Write only if the settings are at this generation.
        #[arg(long)]
        generation: Option<i64>,
    },
    /// List the workers of the cluster with their hosts.
    Workers,
    /// Show totals over the plugins and the cluster.
    Stats,
}

/// The arguments of enable and disable.
#[derive(Debug, Args)]
pub struct Toggle {
    /// The plugin's name.
    name: String,
    /// Wait up to this long (such as 10s) for every worker to get there.
    #[arg(long)]
    wait: Option<String>,
    /// Write only if the plugin is at this generation.
    #[arg(long)]
    generation: Option<i64>,
}

/// The default address: `PLUGD_LISTEN` when set (as `plugd serve` reads it), else plugd's
/// default listen address.
fn default_url() -> String {
    match std::env::var("PLUGD_LISTEN") {
        Ok(listen) if !listen.is_empty() => format!("http://{listen}"),
        _ => "http://127.0.0.1:8080".into(),
    }
}

/// Runs `verb`; failures are printed as one line and become the exit code.
pub fn run(args: ClientArgs, verb: Verb) -> ExitCode {
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("plugd: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let url = args.url.clone().unwrap_or_else(default_url);
    let result = Client::new(&url, args.token.clone())
        .and_then(|client| runtime.block_on(verb.run(&client, args.json)));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(failure) => {
            eprintln!("plugd: {}", failure.message);
            ExitCode::from(failure.code)
        }
    }
}

pub(super) fn print_json(value: &impl Serialize) {
    println!(
        "{}",
        serde_json::to_string_pretty(value).unwrap_or_default()
    );
}

/// Prints rows as columns aligned to their widest cell.
pub(super) fn table(header: &[&str], rows: &[Vec<String>]) {
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let line = |cells: Vec<&str>| {
        let mut out = String::new();
        for (i, (cell, w)) in cells.iter().zip(&widths).enumerate() {
            if i + 1 == cells.len() {
                out.push_str(cell);
            } else {
                out.push_str(&format!("{cell:<w$}  "));
            }
        }
        println!("{}", out.trim_end());
    };
    line(header.to_vec());
    for row in rows {
        line(row.iter().map(String::as_str).collect());
    }
}

pub(super) fn time_of(ms: u64) -> String {
    humantime::format_rfc3339_seconds(std::time::UNIX_EPOCH + Duration::from_millis(ms)).to_string()
}

fn or_dash<T: ToString>(v: Option<T>) -> String {
    v.map_or_else(|| "-".into(), |v| v.to_string())
}

pub(super) fn plugin_path(name: &str) -> String {
    format!(
        "/plugins/{}",
        percent_encoding::utf8_percent_encode(name, percent_encoding::NON_ALPHANUMERIC)
    )
}

impl Verb {
    async fn run(self, client: &Client, json: bool) -> Result<(), Failure> {
        match self {
            Verb::Plugins => plugins(client, json).await,
            Verb::Plugin { name } => plugin(client, &name, json).await,
            Verb::Enable(t) => toggle(client, t, true, json).await,
            Verb::Disable(t) => toggle(client, t, false, json).await,
            Verb::Reload { name } => act(client, &name, "reload", json).await,
            Verb::Restart { name } => act(client, &name, "restart", json).await,
            Verb::Install { file, canary } => {
                super::releases::install(client, &file, canary, json).await
            }
            Verb::Versions { name } => super::releases::versions(client, &name, json).await,
            Verb::Rollback { name, to } => super::releases::rollback(client, &name, to, json).await,
            Verb::Promote { name } => super::releases::promote(client, &name, json).await,
            Verb::Canary { name } => super::releases::canary(client, &name, json).await,
            Verb::Download {
                name,
                version,
                output,
            } => super::releases::download(client, &name, version, output, json).await,
            Verb::Uninstall { name } => {
                let what = format!("uninstall {name}");
                let done: Uninstalled = client.delete(&what, &plugin_path(&name)).await?;
                if json {
                    print_json(&done);
                } else {
                    println!("uninstalled {}", done.uninstalled);
                }
                Ok(())
            }
            Verb::Logs {
                name,
                follow,
                lines,
            } => follow::logs(client, &name, follow, lines, json).await,
            Verb::Events {
                plugin,
                follow,
                limit,
            } => follow::events(client, plugin, follow, limit, json).await,
            Verb::Settings { name } => super::settings::show(client, &name, json).await,
            Verb::Set {
                name,
                values,
                generation,
            } => super::settings::set(client, &name, &values, generation, json).await,
            Verb::Workers => workers(client, json).await,
            Verb::Stats => {
                let stats: Stats = client.get("stats", "/stats", &()).await?;
                if json {
                    print_json(&stats);
                } else {
                    let rows = [
                        ("plugins", stats.plugins),
                        ("enabled", stats.enabled),
                        ("disabled", stats.disabled),
                        ("missing", stats.missing),
                        ("ready (this worker)", stats.ready),
                        ("failed (this worker)", stats.failed),
                        ("routes", stats.routes),
                        ("hooks", stats.hooks),
                        ("workers", stats.workers),
                        ("ready (all workers)", stats.ready_everywhere),
                    ];
                    for (k, v) in rows {
                        println!("{k:<22}{v}");
                    }
                }
                Ok(())
            }
        }
    }
}

async fn plugins(client: &Client, json: bool) -> Result<(), Failure> {
    let list: PluginList = client.get("list plugins", "/plugins", &()).await?;
    if json {
        print_json(&list);
        return Ok(());
    }
    // Workers ready: from every live worker's heartbeat.
    let workers: Workers = client.get("list workers", "/workers", &()).await?;
    let total = workers.workers.len();
    let rows: Vec<Vec<String>> = list
        .plugins
        .iter()
        .map(|p| {
            let ready = workers
                .workers
                .iter()
                .filter(|w| {
                    w.plugins
                        .get(&p.record.name)
                        .is_some_and(|s| s.state == plugd_api::State::Ready)
                })
                .count();
            vec![
                p.record.name.clone(),
                p.record.version.clone(),
                p.state.to_string(),
                format!("{ready}/{total}"),
                p.restarts.to_string(),
                or_dash(p.usage.as_ref().map(|u| ByteSize(u.memory_bytes))),
                or_dash(p.usage.as_ref().map(|u| format!("{:.2}", u.cpu_cores))),
            ]
        })
        .collect();
    table(
        &[
            "NAME", "VERSION", "STATE", "WORKERS", "RESTARTS", "MEMORY", "CPU",
        ],
        &rows,
    );
    Ok(())
}

async fn plugin(client: &Client, name: &str, json: bool) -> Result<(), Failure> {
    let p: Plugin = client
        .get(&format!("show plugin {name}"), &plugin_path(name), &())
        .await?;
    if json {
        print_json(&p);
        return Ok(());
    }
    println!("name         {}", p.record.name);
    println!("version      {}", p.record.version);
    if !p.record.description.is_empty() {
        println!("description  {}", p.record.description);
    }
    println!(
        "enabled      {} (generation {})",
        p.record.enabled, p.record.generation
    );
    println!("state        {}", p.state);
    if let Some(e) = &p.last_error {
        println!("last error   {e}");
    }
    println!("restarts     {}", p.restarts);
    if let Some(pid) = p.pid {
        println!("pid          {pid}, up {}s", p.uptime_s.unwrap_or_default());
    }
    if let Some(u) = &p.usage {
        println!(
            "usage        {} memory, {:.2} cores, {} tasks, {} files",
            ByteSize(u.memory_bytes),
            u.cpu_cores,
            u.tasks,
            u.open_files
        );
    }
    if let Some(l) = &p.limits {
        println!(
            "limits       {} memory, {} cores, {} tasks, {} files, {} ms per request",
            ByteSize(l.memory),
            or_dash(l.cpu),
            l.tasks,
            l.open_files,
            l.request_timeout_ms
        );
    }
    for r in &p.routes {
        println!("route        {} {}", r.method, r.path);
    }
    for h in &p.hooks {
        println!(
            "hook         {} ({}, priority {})",
            h.name, h.mode, h.priority
        );
    }
    for s in &p.services {
        println!("service      {s}");
    }
    for perm in &p.permissions {
        println!("permission   {} ({})", perm.key, perm.description);
    }
    for (worker, s) in p.workers.iter().flatten() {
        println!("worker       {worker}: {}", s.state);
    }
    Ok(())
}

async fn toggle(client: &Client, t: Toggle, enabled: bool, json: bool) -> Result<(), Failure> {
    let verb = if enabled { "enable" } else { "disable" };
    let wait = match &t.wait {
        // plugd waits at most a minute.
        Some(w) => humantime::parse_duration(w)
            .map_err(|e| Failure::usage(format!("--wait {w:?}: {e}")))?
            .min(Duration::from_secs(60)),
        None => Duration::ZERO,
    };
    let query = ToggleQuery {
        generation: t.generation,
        wait: t.wait.clone(),
    };
    let answer: ToggleAnswer = client
        .post(
            &format!("{verb} {}", t.name),
            &format!("{}/{verb}", plugin_path(&t.name)),
            &query,
            wait,
        )
        .await?;
    if json {
        print_json(&answer);
    } else {
        println!("{}", answer.detail);
        for (worker, state) in answer.convergence.iter().flat_map(|c| &c.workers) {
            println!("  {worker}: {state}");
        }
    }
    if let Some(c) = &answer.convergence {
        if !c.converged {
            return Err(Failure::error(format!(
                "{verb} {}: not every worker got there within {wait:?} (pending: {})",
                t.name,
                c.pending.join(", ")
            )));
        }
    }
    Ok(())
}

async fn act(client: &Client, name: &str, verb: &str, json: bool) -> Result<(), Failure> {
    let answer: Accepted = client
        .post(
            &format!("{verb} {name}"),
            &format!("{}/{verb}", plugin_path(name)),
            &(),
            Duration::ZERO,
        )
        .await?;
    if json {
        print_json(&answer);
    } else {
        println!("{}", answer.detail);
    }
    Ok(())
}

async fn workers(client: &Client, json: bool) -> Result<(), Failure> {
    let workers: Workers = client.get("list workers", "/workers", &()).await?;
    if json {
        print_json(&workers);
        return Ok(());
    }
    let rows: Vec<Vec<String>> = workers
        .workers
        .iter()
        .map(|w| {
            let ready = w
                .plugins
                .values()
                .filter(|s| s.state == plugd_api::State::Ready)
                .count();
            let id = if w.this {
                format!("{} *", w.id)
            } else {
                w.id.clone()
            };
            vec![
                id,
                w.host.clone(),
                w.pid.to_string(),
                or_dash(w.system.as_ref().map(|s| s.cpus)),
                or_dash(w.system.as_ref().map(|s| format!("{:.2}", s.load[0]))),
                or_dash(w.system.as_ref().map(|s| {
                    format!("{} / {}", ByteSize(s.memory_used), ByteSize(s.memory_total))
                })),
                format!("{ready}/{}", w.plugins.len()),
                time_of(u64::try_from(w.seen_ms).unwrap_or_default()),
            ]
        })
        .collect();
    table(
        &[
            "WORKER", "HOST", "PID", "CPUS", "LOAD", "MEMORY", "READY", "SEEN",
        ],
        &rows,
    );
    Ok(())
}
