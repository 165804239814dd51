//! The start stub: a plugin's next process, prepared ahead of time.
//!
//! Moving a process into a cgroup waits for an RCU grace period (about 7 ms on this kind of
//! machine, whatever its load), and every plugin start pays it when its child joins its leaf
//! before `exec`. A child started by a process already in the leaf is born there at no cost.
//! So after a plugin becomes ready, plugd starts a stub for its next instance in the
//! background: the small `plugd-start-stub` program installed next to plugd's binary
//! ([`stub_program`]; without it, starts are not prepared), in a fresh leaf, in a process
//! group of its own, with the plugin's directory, environment, rlimits and death signal, and
//! its output already piped to the plugin's log. The stub waits on its stdin. When the plugin
//! must start again, plugd writes the instance's own part ([`StubOrder`]: program, arguments,
//! socket, token, epoch) to the stub, which replaces itself with the plugin (`exec`, so the
//! pid, group, cgroup and pipes stay). A stub whose stdin closes without an order exits.
//!
//! The stub is a program of its own rather than plugd's binary run again: it is
//! single-threaded, runs nothing but [`run`], and costs a fraction of the memory (plugd's
//! large binary dirties over a mebibyte of pages just being loaded).

use serde::{Deserialize, Serialize};
use std::io::Read;
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Command, ExitCode, Stdio};

/// The stub's program name, looked up next to plugd's own binary.
pub const STUB_PROGRAM: &str = "plugd-start-stub";

/// Largest order a stub reads: arguments and environment are small, and a stub must not be
/// made to hold much.
const MAX_ORDER: u64 = 1 << 20;

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

/// The stub's `main`: reads its order from stdin and becomes the plugin. Returns only when
/// the order is missing (the start was discarded) or malformed, or the `exec` failed.
pub fn run() -> ExitCode {
    let mut input = Vec::new();
    if let Err(e) = std::io::stdin().take(MAX_ORDER).read_to_end(&mut input) {
        eprintln!("plugd start stub: cannot read its order: {e}");
        return ExitCode::from(1);
    }
    if input.is_empty() {
        // Discarded without an order: nothing to start.
        return ExitCode::SUCCESS;
    }
    let order: StubOrder = match serde_json::from_slice(&input) {
        Ok(order) => order,
        Err(e) => {
            eprintln!("plugd start stub: malformed order: {e}");
            return ExitCode::from(1);
        }
    };
    let e = Command::new(&order.program)
        .args(&order.args)
        .envs(order.env)
        .stdin(Stdio::null())
        .exec();
    eprintln!("plugd start stub: cannot start {}: {e}", order.program);
    ExitCode::from(match e.kind() {
        std::io::ErrorKind::NotFound => 127,
        std::io::ErrorKind::PermissionDenied => 126,
        _ => 1,
    })
}
