//! The command line: `plugd serve` runs the supervisor; `plugd check` validates manifests;
//! the other verbs (`plugd plugins`, `plugd enable NAME`, …) drive a running plugd through its
//! admin API (see [`crate::client`]).

use crate::app::Application;
use crate::client::{self, ClientArgs, Verb};
use crate::manifest;
use crate::settings::{Settings, ENV_CONFIG};
use crate::store::{secrets, Store};
use clap::{Args, Parser, Subcommand};
use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;

/// plugd: runs plugins as separate processes and serves their routes over HTTP.
#[derive(Debug, Parser)]
#[command(name = "plugd", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
    #[command(flatten)]
    client: ClientArgs,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the supervisor: discover plugins, start them, serve HTTP until SIGTERM or SIGINT.
    Serve(Box<ServeArgs>),
    /// Apply the state store's schema migrations and exit.
    Migrate(Box<ServeArgs>),
    /// The key plugins' secret settings are sealed under.
    Secrets {
        #[command(subcommand)]
        action: SecretsCommand,
    },
    /// Validate every plugin manifest and exit (1 when any is broken).
    Check {
        /// Directory holding one sub-directory per plugin.
        #[arg(long, default_value = "plugins")]
        plugins_dir: PathBuf,
    },
    #[command(flatten)]
    Client(Verb),
}

#[derive(Debug, Subcommand)]
enum SecretsCommand {
    /// Seal every secret again under a new key, in one transaction. The new key replaces the
    /// key file (running workers that read it follow); with PLUGD_SECRET_KEY, it is written to
    /// --new-key-file for you to hand to every worker.
    Rotate {
        #[command(flatten)]
        args: Box<ServeArgs>,
        /// Where to write the new key (mode 0600) instead of the data directory's key file.
        #[arg(long)]
        new_key_file: Option<PathBuf>,
    },
}

/// Flags of `plugd serve`; each overrides the config file and the `PLUGD_*` variable of the same
/// name.
#[derive(Debug, Args)]
struct ServeArgs {
    /// TOML config file (default: $PLUGD_CONFIG, else none).
    #[arg(long, short)]
    config: Option<PathBuf>,
    /// Address to listen on [default: 127.0.0.1:8080].
    #[arg(long)]
    listen: Option<String>,
    /// Directory holding one sub-directory per plugin [default: ./plugins].
    #[arg(long)]
    plugins_dir: Option<String>,
    /// Directory for persistent state [default: ./data].
    #[arg(long)]
    data_dir: Option<String>,
    /// Directory for the plugins' sockets [default: $RUNTIME_DIRECTORY, $XDG_RUNTIME_DIR/plugd, or /tmp/plugd-UID].
    #[arg(long)]
    runtime_dir: Option<String>,
    /// Time a plugin has to connect and handshake [default: 10s].
    #[arg(long)]
    handshake_timeout: Option<String>,
    /// Default time a plugin has to answer a request [default: 30s].
    #[arg(long)]
    request_timeout: Option<String>,
    /// Time shutdown waits for requests, then for plugins [default: 10s].
    #[arg(long)]
    shutdown_timeout: Option<String>,
    /// Default largest request body [default: 8MiB].
    #[arg(long)]
    max_body: Option<String>,
    /// Largest protocol frame [default: 16MiB].
    #[arg(long)]
    max_frame: Option<String>,
    /// Time between resource samples of each plugin; 0s turns monitoring off [default: 2s].
    #[arg(long)]
    monitor_interval: Option<String>,
    /// Put each plugin in a cgroup of its own: true or false [default: true].
    #[arg(long)]
    cgroups: Option<String>,
    /// PostgreSQL URL for the state store [default: SQLite in the data directory].
    #[arg(long)]
    database_url: Option<String>,
    /// Deadline of one hook handler call [default: 5s].
    #[arg(long)]
    hook_timeout: Option<String>,
    /// Log one line per HTTP request: true or false [default: false].
    #[arg(long)]
    access_log: Option<String>,
    /// Most HTTP connections open at once, lowered to stay below the open-file limit
    /// [default: 10000].
    #[arg(long)]
    max_connections: Option<String>,
    /// Longest wait for an HTTP request head, and longest idle time of a kept-alive
    /// connection [default: 10s].
    #[arg(long)]
    header_read_timeout: Option<String>,
    /// Threads running plugd's HTTP server and plugin connections [default: half the CPUs,
    /// at least 1].
    #[arg(long)]
    worker_threads: Option<String>,
    /// Threads taking HTTP connections, each with its own lane to each plugin [default: half
    /// the CPUs, at least 1, at most 4].
    #[arg(long)]
    http_threads: Option<String>,
}

impl ServeArgs {
    fn flags(&self) -> Vec<(&'static str, String)> {
        [
            ("listen", &self.listen),
            ("plugins_dir", &self.plugins_dir),
            ("data_dir", &self.data_dir),
            ("runtime_dir", &self.runtime_dir),
            ("handshake_timeout", &self.handshake_timeout),
            ("request_timeout", &self.request_timeout),
            ("shutdown_timeout", &self.shutdown_timeout),
            ("max_body", &self.max_body),
            ("max_frame", &self.max_frame),
            ("monitor_interval", &self.monitor_interval),
            ("cgroups", &self.cgroups),
            ("database_url", &self.database_url),
            ("hook_timeout", &self.hook_timeout),
            ("access_log", &self.access_log),
            ("max_connections", &self.max_connections),
            ("header_read_timeout", &self.header_read_timeout),
            ("worker_threads", &self.worker_threads),
            ("http_threads", &self.http_threads),
        ]
        .into_iter()
        .filter_map(|(k, v)| v.clone().map(|v| (k, v)))
        .collect()
    }
}

/// Entry point of the `plugd` binary.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging();
    match cli.command {
        Command::Serve(args) => serve(*args),
        Command::Migrate(args) => migrate(*args),
        Command::Check { plugins_dir } => check(&plugins_dir),
        Command::Secrets {
            action: SecretsCommand::Rotate { args, new_key_file },
        } => rotate(*args, new_key_file),
        Command::Client(verb) => client::run(cli.client, verb),
    }
}

fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_env("PLUGD_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .init();
}

fn load_settings(args: &ServeArgs) -> Result<Settings, ExitCode> {
    let config = args
        .config
        .clone()
        .or_else(|| std::env::var_os(ENV_CONFIG).map(PathBuf::from));
    Settings::load(config.as_deref(), |k| std::env::var(k).ok(), &args.flags()).map_err(|e| {
        eprintln!("plugd: {e:#}");
        ExitCode::from(2)
    })
}

/// The async runtime: with one worker, tokio's current-thread scheduler on the calling thread
/// (no work stealing, no wake-ups across threads); with more, the multi-thread scheduler.
fn runtime(workers: usize) -> Result<tokio::runtime::Runtime, ExitCode> {
    let mut builder = if workers == 1 {
        tokio::runtime::Builder::new_current_thread()
    } else {
        let mut b = tokio::runtime::Builder::new_multi_thread();
        b.worker_threads(workers);
        b
    };
    builder.enable_all().build().map_err(|e| {
        eprintln!("plugd: cannot start the async runtime: {e}");
        ExitCode::FAILURE
    })
}

/// Loads the settings, builds the async runtime and runs `work` on it; any failure is
/// reported on stderr and becomes the exit code.
fn run_async<Fut>(args: &ServeArgs, work: impl FnOnce(Settings) -> Fut) -> ExitCode
where
    Fut: std::future::Future<Output = anyhow::Result<()>>,
{
    let settings = match load_settings(args) {
        Ok(s) => s,
        Err(code) => return code,
    };
    let runtime = match runtime(settings.workers()) {
        Ok(rt) => rt,
        Err(code) => return code,
    };
    match runtime.block_on(work(settings)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e:#}");
            eprintln!("plugd: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn migrate(args: ServeArgs) -> ExitCode {
    run_async(&args, |settings| async move {
        std::fs::create_dir_all(&settings.data_dir)?;
        let store = Store::open(settings.database_url.as_deref(), &settings.data_dir).await?;
        store.migrate().await?;
        println!("plugd: the {:?} store is up to date", store.backend());
        Ok(())
    })
}

fn rotate(args: ServeArgs, new_key_file: Option<PathBuf>) -> ExitCode {
    run_async(&args, |settings| async move {
        let mut store = Store::open(settings.database_url.as_deref(), &settings.data_dir).await?;
        store.migrate().await?;
        // Proves this process holds the current key before anything is sealed again.
        store.unlock_secrets(&settings.data_dir).await?;
        let target = match new_key_file {
            Some(path) => path,
            None if std::env::var_os(secrets::KEY_ENV).is_some() => anyhow::bail!(
                "the key comes from {}: give --new-key-file PATH for the new one",
                secrets::KEY_ENV
            ),
            None => settings.data_dir.join(secrets::KEY_FILE),
        };
        let new = secrets::SecretKey::generate();
        // Written (and synced) before the store changes, so the new key cannot be lost.
        let staged = target.with_extension("new");
        secrets::write_key_file(&staged, &new)?;
        let count = match store.rotate_secrets(&new, "plugd secrets rotate").await {
            Ok(count) => count,
            Err(e) => {
                let _ = std::fs::remove_file(&staged);
                return Err(e);
            }
        };
        std::fs::rename(&staged, &target)?;
        println!(
            "plugd: {count} secrets sealed again under key {}; the new key is in {}",
            new.id(),
            target.display()
        );
        Ok(())
    })
}

fn serve(args: ServeArgs) -> ExitCode {
    run_async(&args, |settings| async move {
        let app = Application::build(settings).await?;
        app.run_until_stopped(shutdown_signal()).await
    })
}

/// Resolves on the first SIGTERM or SIGINT.
async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
    let mut int = signal(SignalKind::interrupt()).expect("SIGINT handler");
    let which = tokio::select! {
        _ = term.recv() => "SIGTERM",
        _ = int.recv() => "SIGINT",
    };
    tracing::info!("received {which}");
}

fn check(dir: &std::path::Path) -> ExitCode {
    match manifest::discover(dir) {
        Ok(found) => {
            for m in &found.manifests {
                println!("ok     {} {} ({})", m.name, m.version, m.dir.display());
            }
            for e in &found.errors {
                println!("error  {e}");
            }
            if found.errors.is_empty() {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            }
        }
        Err(e) => {
            eprintln!("plugd: {e}");
            ExitCode::FAILURE
        }
    }
}
