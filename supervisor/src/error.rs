//! The one error type for what can fail while bringing a plugin up: spawning its process, its
//! handshake, its migrations, its start as a whole. Each failure says what went wrong and
//! whether trying again can help, which is all the restart policy needs to know.

use std::fmt;

/// Whether trying the same thing again can succeed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Retry {
    /// It may work next time (a crash, a timeout): the restart policy decides.
    Later,
    /// It cannot work as things are (a missing command, a refused handshake, a broken
    /// migration): give up until something changes.
    Never,
    /// plugd's store could not be reached; not the plugin's fault, so it does not count
    /// against the plugin's restart policy.
    WhenStoreBack,
    /// The plugin needs settings an admin has not set: give up until its settings change.
    WhenSettingsChange,
    /// plugd itself ran short of a resource (file descriptors, memory, processes); not the
    /// plugin's fault either, so it does not count against the restart policy.
    WhenResourcesFree,
}

/// A failure with its cause and its retry class.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    /// What went wrong, in words an operator can act on.
    pub message: String,
    /// Whether retrying can help.
    pub retry: Retry,
}

impl Failure {
    /// A failure that may go away on a retry.
    pub fn later(message: impl Into<String>) -> Failure {
        Failure {
            message: message.into(),
            retry: Retry::Later,
        }
    }

    /// A failure that a retry cannot mend.
    pub fn never(message: impl Into<String>) -> Failure {
        Failure {
            message: message.into(),
            retry: Retry::Never,
        }
    }

    /// A failure caused by the store being unreachable.
    pub fn store_away(message: impl Into<String>) -> Failure {
        Failure {
            message: message.into(),
            retry: Retry::WhenStoreBack,
        }
    }

    /// A failure for want of settings only an admin can give.
    pub fn needs_settings(message: impl Into<String>) -> Failure {
        Failure {
            message: message.into(),
            retry: Retry::WhenSettingsChange,
        }
    }

    /// A failure caused by plugd running short of a resource.
    pub fn ours(message: impl Into<String>) -> Failure {
        Failure {
            message: message.into(),
            retry: Retry::WhenResourcesFree,
        }
    }

    /// A failure of an operating-system call: plugd's own when the system refused for want of
    /// a resource (`EMFILE`, `ENFILE`, `ENOMEM`, `EAGAIN`), else one that may pass.
    pub fn from_io(message: impl Into<String>, e: &std::io::Error) -> Failure {
        use nix::errno::Errno;
        let short = e.raw_os_error().map(Errno::from_raw).is_some_and(|errno| {
            matches!(
                errno,
                Errno::EMFILE | Errno::ENFILE | Errno::ENOMEM | Errno::EAGAIN | Errno::ENOBUFS
            )
        });
        if short {
            Failure::ours(message)
        } else {
            Failure::later(message)
        }
    }

    /// Whether the failure is not the plugin's doing, so it must not count against it.
    pub fn is_ours(&self) -> bool {
        matches!(self.retry, Retry::WhenStoreBack | Retry::WhenResourcesFree)
    }

    /// The same failure with `context` put in front of its message.
    pub fn context(self, context: &str) -> Failure {
        Failure {
            message: format!("{context}: {}", self.message),
            retry: self.retry,
        }
    }

    /// Whether a retry is pointless.
    pub fn is_fatal(&self) -> bool {
        matches!(self.retry, Retry::Never | Retry::WhenSettingsChange)
    }
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for Failure {}

impl From<String> for Failure {
    fn from(message: String) -> Failure {
        Failure::later(message)
    }
}
