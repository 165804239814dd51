//! The core: each plugin's state machine and everything that feeds it.
//!
//! The [`reconcile`] loop owns every plugin's state (only it can write one); [`instance`] runs
//! one instance's life (start, follow, stop); [`policy`] decides restarts; [`router`] is a
//! plugin's route table from its handshake; [`watcher`] turns file changes into rescans;
//! [`cluster`] heartbeats and follows other workers' changes; [`hooks`] dispatches hooks and
//! [`peers`] answers plugins' calls that reach other plugins; [`settings`] delivers settings
//! to a running instance; [`spare`] prepares each plugin's next start ahead of time.

pub mod canary;
pub mod cluster;
pub mod hooks;
pub mod instance;
pub mod peers;
pub mod policy;
pub mod reconcile;
pub mod router;
pub mod settings;
pub mod spare;
pub mod watcher;

pub use instance::Instance;
pub use reconcile::{
    Event, Handle, PluginMap, PluginSlot, PluginState, Reconciler, Registry, StandbyView,
};
