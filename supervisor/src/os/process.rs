//! Starting a plugin's process without copying plugd.
//!
//! `fork` copies the page tables of plugd's large process (about half a millisecond of CPU
//! here, more as plugd grows), and `posix_spawn` cannot run the steps a plugin's process must
//! take before `exec` (its death signal, its cgroup, its rlimits). So plugd does what
//! `posix_spawn` does inside: a `clone` with `CLONE_VM | CLONE_VFORK`, where the child runs on
//! a small stack of its own in plugd's memory, takes those steps with plain system calls and
//! `exec`s, while the thread that cloned it waits. Nothing is copied and no second program
//! runs first.
//!
//! The child shares plugd's memory until `exec`, so it allocates nothing and takes no lock:
//! everything it needs ([`Launch`]: the program's path, arguments, environment, directory,
//! descriptors, cgroup files, rlimits) is prepared before the clone, and a failed step leaves
//! its number and `errno` in the plan for the parent to report. Every signal is blocked around
//! the clone and the child resets its handlers before unblocking them, so no handler of plugd's
//! runs in the child.
//!
//! The started [`Process`] is watched through a pidfd (Linux 5.3 or later), which becomes
//! readable when the process ends; it is then reaped with `waitpid`. Where there is no
//! `pidfd_open` (older kernels, valgrind), each SIGCHLD is the cue to try `waitpid` again.
//! Dropping a `Process` that has not been reaped kills it and reaps it in the background.
#![allow(unsafe_code)]

use super::cgroups::join_cgroups;
use super::rlimits::Rlimits;
use nix::libc;
use nix::unistd::Pid;
use std::collections::BTreeMap;
use std::ffi::{CString, OsStr, OsString};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::ExitStatus;
use std::sync::atomic::{AtomicU64, Ordering};
use tokio::io::unix::AsyncFd;
use tokio::io::Interest;
use tokio::net::unix::pipe;
use tokio::signal::unix::{signal, Signal, SignalKind};

/// The child's stack until `exec`: it calls nothing but a few system calls.
const CHILD_STACK: usize = 64 * 1024;

/// Where `PATH` is searched when neither the plugin's environment nor plugd's has one.
const DEFAULT_PATH: &str = "/usr/local/bin:/usr/bin:/bin";

/// Everything a process is started with, prepared before the clone.
#[derive(Debug)]
pub struct Launch {
    /// The program's path, found on `PATH` when it was given without a slash.
    program: CString,
    argv: Vec<CString>,
    envp: Vec<CString>,
    dir: CString,
    /// The child's stdin; `/dev/null` when `None`.
    stdin: Option<OwnedFd>,
    supervisor: Pid,
    cgroup_procs: Vec<CString>,
    rlimits: Rlimits,
}

impl Launch {
    /// A launch of `program` with `args` in `dir`, its environment plugd's own without the
    /// variables whose names start with `drop_prefix`, then `env` added in order (a later value
    /// replaces an earlier one). Fails when a string holds a NUL byte, and with `NotFound` or
    /// `PermissionDenied` when `program` names no executable file.
    pub fn new(
        program: &Path,
        args: &[String],
        dir: &Path,
        drop_prefix: &str,
        env: impl IntoIterator<Item = (OsString, OsString)>,
        rlimits: Rlimits,
        cgroup_procs: Vec<CString>,
    ) -> std::io::Result<Launch> {
        let mut vars: BTreeMap<OsString, OsString> = std::env::vars_os()
            .filter(|(k, _)| !k.as_bytes().starts_with(drop_prefix.as_bytes()))
            .collect();
        vars.extend(env);
        let resolved = resolve(program, dir, vars.get(OsStr::new("PATH")))?;
        let envp = vars
            .iter()
            .map(|(k, v)| {
                let mut kv = k.as_bytes().to_vec();
                kv.push(b'=');
                kv.extend_from_slice(v.as_bytes());
                c_string(kv)
            })
            .collect::<std::io::Result<Vec<_>>>()?;
        let argv = std::iter::once(program.as_os_str().as_bytes().to_vec())
            .chain(args.iter().map(|a| a.as_bytes().to_vec()))
            .map(c_string)
            .collect::<std::io::Result<Vec<_>>>()?;
        Ok(Launch {
            program: c_string(resolved.into_os_string().into_vec())?,
            argv,
            envp,
            dir: c_string(dir.as_os_str().as_bytes().to_vec())?,
            stdin: None,
            supervisor: nix::unistd::getpid(),
            cgroup_procs,
            rlimits,
        })
    }

    /// Gives the child `fd` as its stdin instead of `/dev/null`.
    pub fn stdin(mut self, fd: OwnedFd) -> Launch {
        self.stdin = Some(fd);
        self
    }

    /// Starts the process: in a process group of its own, stdout and stderr piped to plugd.
    /// Returns once it has `exec`ed (or failed to). Call it from a thread that lives as long as
    /// plugd: the child's death signal fires when the thread that cloned it ends.
    pub fn spawn(&self) -> std::io::Result<Started> {
        use nix::fcntl::OFlag;
        let (out_r, out_w) = nix::unistd::pipe2(OFlag::O_CLOEXEC)?;
        let (err_r, err_w) = nix::unistd::pipe2(OFlag::O_CLOEXEC)?;
        let null;
        let stdin = match &self.stdin {
            Some(fd) => fd.as_raw_fd(),
            None => {
                null = OwnedFd::from(std::fs::File::open("/dev/null")?);
                null.as_raw_fd()
            }
        };
        let mut argv: Vec<*const libc::c_char> = self.argv.iter().map(|a| a.as_ptr()).collect();
        argv.push(std::ptr::null());
        let mut envp: Vec<*const libc::c_char> = self.envp.iter().map(|e| e.as_ptr()).collect();
        envp.push(std::ptr::null());
        let plan = Plan {
            program: self.program.as_ptr(),
            argv: argv.as_ptr(),
            envp: envp.as_ptr(),
            dir: self.dir.as_ptr(),
            fds: [stdin, out_w.as_raw_fd(), err_w.as_raw_fd()],
            supervisor: self.supervisor,
            cgroup_procs: &self.cgroup_procs,
            rlimits: self.rlimits,
            failure: AtomicU64::new(0),
        };
        let mut stack = vec![0u8; CHILD_STACK];
        // SAFETY: the stack grows down from its (16-byte aligned) end and outlives the child's
        // use of it: with CLONE_VFORK this thread resumes only once the child has `exec`ed or
        // exited. `plan` and everything it points into stay alive and unchanged meanwhile.
        // Every signal is blocked across the clone, so none is handled in the child before it
        // resets the handlers (see `child_main`).
        let pid = unsafe {
            let top = stack.as_mut_ptr().add(CHILD_STACK);
            let top = top.sub(top as usize % 16);
            let mut all: libc::sigset_t = std::mem::zeroed();
            let mut old: libc::sigset_t = std::mem::zeroed();
            libc::sigfillset(&mut all);
            libc::pthread_sigmask(libc::SIG_SETMASK, &all, &mut old);
            let pid = libc::clone(
                child_main,
                top.cast(),
                libc::CLONE_VM | libc::CLONE_VFORK | libc::SIGCHLD,
                std::ptr::from_ref(&plan).cast_mut().cast(),
            );
            let cloned = std::io::Error::last_os_error();
            libc::pthread_sigmask(libc::SIG_SETMASK, &old, std::ptr::null_mut());
            if pid == -1 {
                return Err(cloned);
            }
            pid
        };
        drop((out_w, err_w));
        let failure = plan.failure.load(Ordering::Acquire);
        if failure != 0 {
            let _ = nix::sys::wait::waitpid(Pid::from_raw(pid), None);
            return Err(Step::report(failure));
        }
        // SAFETY: a plain system call; the pid is this process's unreaped child, so it cannot
        // have been reused.
        let pidfd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
        // SAFETY: `pidfd_open` returned a new descriptor that nothing else owns.
        let pidfd = (pidfd >= 0).then(|| unsafe { OwnedFd::from_raw_fd(pidfd as RawFd) });
        Ok(Started {
            pid: pid as u32,
            pidfd,
            stdout: out_r,
            stderr: err_r,
        })
    }
}

/// A process just started by [`Launch::spawn`], not yet tied to a runtime.
#[derive(Debug)]
pub struct Started {
    /// Its pid.
    pub pid: u32,
    /// `None` without `pidfd_open`.
    pidfd: Option<OwnedFd>,
    stdout: OwnedFd,
    stderr: OwnedFd,
}

impl Started {
    /// The process, watched by the current tokio runtime.
    pub fn watch(self) -> std::io::Result<Process> {
        let mut process = Process {
            pid: self.pid,
            exit: None,
            status: None,
            stdout: None,
            stderr: None,
        };
        process.exit = Some(match self.pidfd {
            // SAFETY: the `AsyncFd` owns the pidfd, which stays open and the same until it is
            // dropped.
            Some(pidfd) => Exit::Pidfd(
                unsafe { AsyncFd::register_with_interest(pidfd, Interest::READABLE) }
                    .map_err(std::io::Error::from)?,
            ),
            None => Exit::Sigchld(signal(SignalKind::child())?),
        });
        process.stdout = Some(pipe::Receiver::from_owned_fd(self.stdout)?);
        process.stderr = Some(pipe::Receiver::from_owned_fd(self.stderr)?);
        Ok(process)
    }
}

/// How the end of a process is noticed.
#[derive(Debug)]
enum Exit {
    /// Its pidfd becomes readable.
    Pidfd(AsyncFd<OwnedFd>),
    /// Some child ended (listened to from before the first `waitpid`, so none is missed).
    Sigchld(Signal),
}

/// A started process, whose exit is awaited (see [`Exit`]). Killed and reaped when dropped
/// before it was reaped.
#[derive(Debug)]
pub struct Process {
    pid: u32,
    /// `None` once reaped.
    exit: Option<Exit>,
    status: Option<ExitStatus>,
    /// Its stdout, until taken.
    pub stdout: Option<pipe::Receiver>,
    /// Its stderr, until taken.
    pub stderr: Option<pipe::Receiver>,
}

impl Process {
    /// Its pid; `None` once it has been reaped (the pid may then be another process's).
    pub fn id(&self) -> Option<u32> {
        self.status.is_none().then_some(self.pid)
    }

    /// Waits for it to end and reaps it.
    pub async fn wait(&mut self) -> std::io::Result<ExitStatus> {
        loop {
            if let Some(status) = self.try_wait()? {
                return Ok(status);
            }
            match &mut self.exit {
                Some(Exit::Pidfd(pidfd)) => pidfd.readable().await?.clear_ready(),
                Some(Exit::Sigchld(sigchld)) => {
                    sigchld.recv().await;
                }
                None => return Err(std::io::Error::other("the process is not watched")),
            }
        }
    }

    /// Reaps it if it has ended, without waiting.
    pub fn try_wait(&mut self) -> std::io::Result<Option<ExitStatus>> {
        if let Some(status) = self.status {
            return Ok(Some(status));
        }
        let mut raw = 0;
        // SAFETY: a plain system call on our own child.
        let reaped = unsafe { libc::waitpid(self.pid as libc::pid_t, &mut raw, libc::WNOHANG) };
        match reaped {
            0 => Ok(None),
            -1 => Err(std::io::Error::last_os_error()),
            _ => {
                let status = ExitStatus::from_raw(raw);
                self.status = Some(status);
                self.exit = None;
                Ok(Some(status))
            }
        }
    }

    /// Sends it SIGKILL, unless it has been reaped.
    fn start_kill(&mut self) {
        if self.status.is_none() {
            let _ = nix::sys::signal::kill(
                Pid::from_raw(self.pid as i32),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        if matches!(self.try_wait(), Ok(Some(_)) | Err(_)) {
            return;
        }
        self.start_kill();
        let pid = self.pid;
        let reap = move || {
            let _ = nix::sys::wait::waitpid(Pid::from_raw(pid as i32), None);
        };
        match (self.exit.take(), tokio::runtime::Handle::try_current()) {
            (Some(Exit::Pidfd(pidfd)), Ok(runtime)) => {
                runtime.spawn(async move {
                    let _ = pidfd.readable().await;
                    reap();
                });
            }
            _ => {
                let _ = std::thread::Builder::new()
                    .name("plugd-reap".into())
                    .spawn(reap);
            }
        }
    }
}

/// What the child reads, in plugd's memory, and where it reports a failed step.
struct Plan<'a> {
    program: *const libc::c_char,
    argv: *const *const libc::c_char,
    envp: *const *const libc::c_char,
    dir: *const libc::c_char,
    /// Its stdin, stdout and stderr.
    fds: [RawFd; 3],
    supervisor: Pid,
    cgroup_procs: &'a [CString],
    rlimits: Rlimits,
    /// `(step << 32) | errno` of the step that failed; 0 while none has.
    failure: AtomicU64,
}

/// The child's steps before `exec`, in order, as reported when one fails.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u64)]
enum Step {
    Stdio = 1,
    Directory,
    DeathSignal,
    /// plugd ended before the death signal was set: nobody would kill the child.
    SupervisorGone,
    Cgroup,
    Rlimits,
    Exec,
}

impl Step {
    const ALL: [Step; 7] = [
        Step::Stdio,
        Step::Directory,
        Step::DeathSignal,
        Step::SupervisorGone,
        Step::Cgroup,
        Step::Rlimits,
        Step::Exec,
    ];

    /// The error a child's report stands for. A failed `exec` keeps its `errno` as it is (a
    /// missing or non-executable program is told apart by its kind); the other steps say
    /// which step failed.
    fn report(failure: u64) -> std::io::Error {
        let errno = (failure & 0xffff_ffff) as i32;
        let step = Step::ALL
            .into_iter()
            .find(|s| *s as u64 == failure >> 32)
            .unwrap_or(Step::Exec);
        let e = std::io::Error::from_raw_os_error(errno);
        let what = match step {
            Step::Exec => return e,
            Step::Stdio => "cannot set up its stdin, stdout and stderr",
            Step::Directory => "cannot enter the plugin's directory",
            Step::DeathSignal => "cannot set its death signal",
            Step::SupervisorGone => {
                return std::io::Error::other("the supervisor exited during the spawn")
            }
            Step::Cgroup => "cannot join its cgroup",
            Step::Rlimits => "cannot set its rlimits",
        };
        std::io::Error::other(format!("{what}: {e}"))
    }
}

/// The child, from the clone to `exec`. Only system calls: no allocation, no lock.
extern "C" fn child_main(plan: *mut libc::c_void) -> libc::c_int {
    // SAFETY: `plan` is the parent's `Plan`, alive and unchanged until this child `exec`s or
    // exits (CLONE_VFORK); only its atomic is written.
    let plan = unsafe { &*(plan as *const Plan<'_>) };
    let fail = |step: Step, errno: i32| -> ! {
        plan.failure.store(
            ((step as u64) << 32) | errno as u32 as u64,
            Ordering::Release,
        );
        // SAFETY: ends the child at once, without running plugd's exit handlers.
        unsafe { libc::_exit(127) }
    };
    let errno = || std::io::Error::last_os_error().raw_os_error().unwrap_or(0);
    // SAFETY: plain system calls on this child's own state and on descriptors and strings the
    // parent prepared.
    unsafe {
        // plugd's handlers must not run here (the child shares its memory), and plugd ignores
        // SIGPIPE, which a plugin must not inherit. Then the signals are unblocked.
        for signal in 1..65 {
            let mut old: libc::sigaction = std::mem::zeroed();
            if libc::sigaction(signal, std::ptr::null(), &mut old) != 0 {
                continue;
            }
            if old.sa_sigaction != libc::SIG_DFL
                && (old.sa_sigaction != libc::SIG_IGN || signal == libc::SIGPIPE)
            {
                let mut default: libc::sigaction = std::mem::zeroed();
                default.sa_sigaction = libc::SIG_DFL;
                libc::sigaction(signal, &default, std::ptr::null_mut());
            }
        }
        let mut none: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut none);
        libc::pthread_sigmask(libc::SIG_SETMASK, &none, std::ptr::null_mut());

        if libc::setpgid(0, 0) != 0 {
            fail(Step::Stdio, errno());
        }
        for (target, &fd) in plan.fds.iter().enumerate() {
            let target = target as RawFd;
            let done = if fd == target {
                libc::fcntl(fd, libc::F_SETFD, 0)
            } else {
                libc::dup2(fd, target)
            };
            if done < 0 {
                fail(Step::Stdio, errno());
            }
        }
        if libc::chdir(plan.dir) != 0 {
            fail(Step::Directory, errno());
        }
        if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
            fail(Step::DeathSignal, errno());
        }
        // plugd may have died before the death signal was set.
        if libc::getppid() != plan.supervisor.as_raw() {
            fail(Step::SupervisorGone, 0);
        }
        // Into the plugin's cgroup first: nothing it forks can start outside it. Before the
        // rlimits: under a lower open-files limit opening `cgroup.procs` could fail.
        if let Err(e) = join_cgroups(plan.cgroup_procs) {
            fail(Step::Cgroup, e.raw_os_error().unwrap_or(0));
        }
        if let Err(e) = plan.rlimits.apply() {
            fail(Step::Rlimits, e.raw_os_error().unwrap_or(0));
        }
        libc::execve(plan.program, plan.argv, plan.envp);
        fail(Step::Exec, errno())
    }
}

/// `program` as `exec` will find it: as given when it holds a slash (relative to `dir`),
/// otherwise the first executable file of that name in `path`'s directories.
fn resolve(program: &Path, dir: &Path, path: Option<&OsString>) -> std::io::Result<PathBuf> {
    use std::io::ErrorKind;
    if program.as_os_str().as_bytes().contains(&b'/') {
        return Ok(dir.join(program));
    }
    let path = path.map_or(OsStr::new(DEFAULT_PATH), OsString::as_os_str);
    let mut denied = false;
    for entry in std::env::split_paths(path) {
        let candidate = dir.join(entry).join(program);
        if !candidate.is_file() {
            continue;
        }
        if nix::unistd::access(&candidate, nix::unistd::AccessFlags::X_OK).is_ok() {
            return Ok(candidate);
        }
        denied = true;
    }
    Err(if denied {
        ErrorKind::PermissionDenied.into()
    } else {
        ErrorKind::NotFound.into()
    })
}

fn c_string(bytes: Vec<u8>) -> std::io::Result<CString> {
    CString::new(bytes).map_err(|e| {
        std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            format!("a NUL byte in the program, an argument, a variable or the directory: {e}"),
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn launch(program: &str, args: &[&str], env: &[(&str, &str)]) -> std::io::Result<Launch> {
        let args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
        let env = env.iter().map(|(k, v)| (k.into(), v.into()));
        Launch::new(
            Path::new(program),
            &args,
            Path::new("/tmp"),
            "PLUGD_TEST_DROPPED",
            env,
            Rlimits::for_build(),
            Vec::new(),
        )
    }

    async fn output(p: &mut Process) -> String {
        use tokio::io::AsyncReadExt;
        let mut out = String::new();
        let mut stdout = p.stdout.take().expect("stdout");
        stdout.read_to_string(&mut out).await.expect("read");
        out
    }

    #[tokio::test]
    async fn the_child_runs_in_its_directory_group_and_environment() {
        // One of the test's own variables stands for plugd's `PLUGD_*`: not passed on.
        let (dropped, _) = std::env::vars()
            .find(|(k, _)| k != "PATH")
            .expect("the test runs with some variable besides PATH");
        let script = r#"pwd -P; echo "$GIVEN"; readlink /proc/self/fd/0; env | cut -d= -f1; [ "$(cut -d' ' -f5 /proc/$$/stat)" = "$$" ] && exit 3; exit 4"#;
        let l = Launch::new(
            Path::new("sh"),
            &["-c".into(), script.into()],
            Path::new("/tmp"),
            &dropped,
            [("GIVEN".into(), "given".into())],
            Rlimits::for_build(),
            Vec::new(),
        )
        .expect("launch");
        let mut p = l.spawn().expect("spawn").watch().expect("watch");
        let out = output(&mut p).await;
        let lines: Vec<&str> = out.lines().collect();
        assert_eq!(lines[..3], ["/tmp", "given", "/dev/null"], "{out}");
        assert!(lines.contains(&"GIVEN"), "{out}");
        assert!(
            !lines.contains(&dropped.as_str()),
            "{dropped} passed on: {out}"
        );
        let status = p.wait().await.expect("wait");
        assert_eq!(
            status.code(),
            Some(3),
            "it leads a process group of its own"
        );
        assert_eq!(p.id(), None, "reaped");
    }

    #[tokio::test]
    async fn a_missing_or_unusable_program_says_what_was_wrong() {
        let e = launch("plugd-no-such-program", &[], &[]).expect_err("not on PATH");
        assert_eq!(e.kind(), std::io::ErrorKind::NotFound);
        let e = launch("/nonexistent/program", &[], &[])
            .expect("a path is not searched")
            .spawn()
            .expect_err("exec fails");
        assert_eq!(e.kind(), std::io::ErrorKind::NotFound);
        let dir = tempfile::tempdir().expect("tempdir");
        let plain = dir.path().join("not-a-program");
        std::fs::write(&plain, "#!/bin/sh\n").expect("write");
        let e = launch(plain.to_str().expect("utf-8"), &[], &[])
            .expect("launch")
            .spawn()
            .expect_err("not executable");
        assert_eq!(e.kind(), std::io::ErrorKind::PermissionDenied, "{e}");
        let e = launch("sh", &["a\0b"], &[]).expect_err("NUL");
        assert!(e.to_string().contains("NUL byte"), "{e}");
        let mut l = launch("sh", &[], &[]).expect("launch");
        l.dir = CString::new("/nonexistent/dir").expect("dir");
        let e = l.spawn().expect_err("no directory");
        assert!(
            e.to_string()
                .contains("cannot enter the plugin's directory"),
            "{e}"
        );
    }

    #[tokio::test]
    async fn without_a_pidfd_the_exit_is_noticed_by_sigchld() {
        // It ends once told to, after it is watched.
        let (theirs, ours) = std::os::unix::net::UnixStream::pair().expect("pair");
        let l = launch("sh", &["-c", "read line; exit 5"], &[]).expect("launch");
        let mut started = l.stdin(theirs.into()).spawn().expect("spawn");
        started.pidfd = None;
        let mut p = started.watch().expect("watch");
        assert!(matches!(p.exit, Some(Exit::Sigchld(_))));
        assert!(p.try_wait().expect("try").is_none());
        std::io::Write::write_all(&mut &ours, b"go\n").expect("tell");
        let status = tokio::time::timeout(std::time::Duration::from_secs(10), p.wait())
            .await
            .expect("noticed")
            .expect("wait");
        assert_eq!(status.code(), Some(5));
    }

    #[tokio::test]
    async fn a_dropped_process_is_killed_and_reaped() {
        let l = launch("sleep", &["30"], &[]).expect("launch");
        let p = l.spawn().expect("spawn").watch().expect("watch");
        let pid = Pid::from_raw(p.id().expect("running") as i32);
        drop(p);
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        // Gone once reaped: signal 0 reaches neither a live process nor a zombie of ours.
        while nix::sys::signal::kill(pid, None).is_ok() {
            assert!(std::time::Instant::now() < deadline, "{pid} still there");
            tokio::task::yield_now().await;
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
    }
}
