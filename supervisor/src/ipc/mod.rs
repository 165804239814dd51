//! The protocol connection to each plugin instance: the [`handshake`], then one multiplexed
//! [`Connection`] with many calls in flight each way, and the answers to the [`calls`] a plugin
//! makes to plugd (its key-value store, other plugins' services, hooks).
//!
//! This layer speaks frames and messages over a socket; it does not know plugin states or the
//! reconcile loop. What a plugin's calls need of other plugins comes in through [`Peers`].

pub mod calls;
pub mod connection;
pub mod handshake;
pub mod lane;
pub mod stream;

pub use calls::{Calls, Peers, RESERVED_PREFIX};
pub use connection::{CallError, Connection};
pub use handshake::{handshake, Expected};
pub use lane::{LaneExpected, LaneRuntimes, Lanes};
