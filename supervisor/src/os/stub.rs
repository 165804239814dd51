//! The start stub: a plugin's next process, prepared ahead of time.
//!
//! Moving a process into a cgroup can wait for an RCU grace period (about 7 ms on cgroup v2 on
//! this kind of machine, whatever its load), and creating the cgroup takes the kernel's cgroup
//! lock. So after a plugin becomes ready plugd prepares its next start in the background (see
//! `supervise::spare`): a fresh leaf, and in it `plugd-start-stub`, installed next to plugd's
//! binary ([`stub_program`]), started like any plugin process (see [`super::process`]: in the
//! plugin's directory, environment and process group, with its death signal, cgroup and
//! rlimits, its output piped to the plugin's log), its stdin one end of a socket pair: the
//! *control* socket. A restart then only sends it, as one line of JSON, the [`StubOrder`]:
//! the program, its arguments and the instance's variables. The stub replaces itself with the
//! plugin (`exec`, so pid, group, cgroup and pipes stay, and stdin becomes `/dev/null`). Its
//! duplicate of the control socket is close-on-exec, so plugd reads the end of the stream when
//! the `exec` succeeded, and the error (its `errno`) when it failed: the same outcome a direct
//! start reports. A stub whose control socket closes without an order exits.
//!
//! The stub is a program of its own rather than plugd's binary run again: it is
//! single-threaded, runs nothing but [`run`], and costs a fraction of the memory (plugd's
//! large binary dirties over a mebibyte of pages just being loaded).

use serde::{Deserialize, Serialize};
use std::io::{BufRead, BufReader, Read, Write};
use std::os::fd::AsFd;
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Command, ExitCode, Stdio};

/// The stub's program name, looked up next to plugd's own binary.
pub const STUB_PROGRAM: &str = "plugd-start-stub";

/// Largest line a stub reads, and largest answer plugd reads from one: arguments and
/// environment are small, and neither side must be made to hold much.
pub const MAX_LINE: u64 = 1 << 20;

/// The stub program next to the running plugd binary, if it is there.
pub fn stub_program() -> Option<PathBuf> {
    let exe = std::env::current_exe().ok()?;
    let stub = exe.with_file_name(STUB_PROGRAM);
    nix::unistd::access(&stub, nix::unistd::AccessFlags::X_OK)
        .is_ok()
        .then_some(stub)
}

/// What a stub becomes: the plugin's program with its arguments and the variables of this one
/// instance (added to the environment the stub was started with).
#[derive(Debug, Serialize, Deserialize)]
pub struct StubOrder {
    /// The program to execute.
    pub program: String,
    /// Its arguments.
    pub args: Vec<String>,
    /// Variables to set on top of the stub's environment.
    pub env: Vec<(String, String)>,
}

/// A failure the stub reports on its control socket before it exits: the OS error number
/// when there is one (so plugd maps it as it maps a failed spawn), and the message.
#[derive(Debug, Serialize, Deserialize)]
pub struct StubError {
    /// `errno`, when the failure was the system's.
    pub errno: Option<i32>,
    /// What failed.
    pub message: String,
}

impl StubError {
    /// The failure as the `std::io::Error` a spawn would have returned.
    pub fn into_io(self) -> std::io::Error {
        match self.errno {
            Some(errno) => std::io::Error::from_raw_os_error(errno),
            None => std::io::Error::other(self.message),
        }
    }
}

/// The stub's `main`: becomes the plugin, as its control socket (stdin) says. Returns only
/// when no order came (the start was discarded), on a malformed line, or when the `exec`
/// failed.
pub fn run() -> ExitCode {
    // A close-on-exec duplicate: gone once the plugin runs, which is how plugd learns it does.
    let control = match std::io::stdin().as_fd().try_clone_to_owned() {
        Ok(fd) => std::fs::File::from(fd),
        Err(e) => {
            eprintln!("plugd start stub: no control socket: {e}");
            return ExitCode::from(1);
        }
    };
    let mut reader = BufReader::new(&control);
    let order = match read_line::<StubOrder>(&mut reader) {
        Ok(Some(order)) => order,
        // Discarded without an order: nothing to start.
        Ok(None) => return ExitCode::SUCCESS,
        Err(e) => return fail(&control, "malformed order", &e),
    };
    let e = Command::new(&order.program)
        .args(&order.args)
        .envs(order.env)
        .stdin(Stdio::null())
        .exec();
    let code = match e.kind() {
        std::io::ErrorKind::NotFound => 127,
        std::io::ErrorKind::PermissionDenied => 126,
        _ => 1,
    };
    fail(&control, &format!("cannot start {}", order.program), &e);
    ExitCode::from(code)
}

/// Reads one line of JSON; `None` at the end of the stream.
fn read_line<T: serde::de::DeserializeOwned>(
    reader: &mut impl BufRead,
) -> std::io::Result<Option<T>> {
    let mut line = Vec::new();
    reader
        .by_ref()
        .take(MAX_LINE)
        .read_until(b'\n', &mut line)?;
    if line.is_empty() {
        return Ok(None);
    }
    serde_json::from_slice(&line)
        .map(Some)
        .map_err(std::io::Error::other)
}

/// Reports `e` on the control socket and on stderr (the plugin's log), and gives the exit code.
fn fail(control: &std::fs::File, what: &str, e: &std::io::Error) -> ExitCode {
    eprintln!("plugd start stub: {what}: {e}");
    let report = StubError {
        errno: e.raw_os_error(),
        message: format!("{what}: {e}"),
    };
    if let Ok(mut line) = serde_json::to_vec(&report) {
        line.push(b'\n');
        let _ = (&*control).write_all(&line);
    }
    ExitCode::from(1)
}

/// The supervisor's side of a stub's control socket.
#[derive(Debug)]
pub struct Control {
    stream: tokio::io::BufReader<tokio::net::UnixStream>,
}

impl Control {
    /// A socket pair: the stub's end (for its stdin) and plugd's.
    pub fn pair() -> std::io::Result<(std::os::fd::OwnedFd, Control)> {
        let (ours, theirs) = std::os::unix::net::UnixStream::pair()?;
        ours.set_nonblocking(true)?;
        let stream = tokio::net::UnixStream::from_std(ours)?;
        Ok((
            theirs.into(),
            Control {
                stream: tokio::io::BufReader::new(stream),
            },
        ))
    }

    /// Sends one line of JSON.
    pub async fn send(&mut self, what: &impl Serialize) -> std::io::Result<()> {
        use tokio::io::AsyncWriteExt;
        let mut line = serde_json::to_vec(what).map_err(std::io::Error::other)?;
        line.push(b'\n');
        self.stream.get_mut().write_all(&line).await
    }

    /// Waits for the outcome of the order: `Ok` when the stub's `exec` succeeded (its end of
    /// the socket closed without a word), the error it reported otherwise.
    pub async fn started(&mut self) -> std::io::Result<()> {
        match self.answer().await? {
            None => Ok(()),
            Some(line) => Err(reported(&line)),
        }
    }

    async fn answer(&mut self) -> std::io::Result<Option<String>> {
        use tokio::io::{AsyncBufReadExt, AsyncReadExt};
        let mut line = Vec::new();
        let mut limited = (&mut self.stream).take(MAX_LINE);
        limited.read_until(b'\n', &mut line).await?;
        if line.is_empty() {
            return Ok(None);
        }
        Ok(Some(String::from_utf8_lossy(&line).trim_end().to_owned()))
    }
}

/// The error a stub reported on `line`.
fn reported(line: &str) -> std::io::Error {
    match serde_json::from_str::<StubError>(line) {
        Ok(e) => e.into_io(),
        Err(_) => std::io::Error::other(format!("the start stub answered {line:?}")),
    }
}
