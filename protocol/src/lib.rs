//! The wire protocol spoken between the plugd supervisor and each plugin process.
//!
//! Everything that crosses the process boundary is defined here and nowhere else: the frame layout
//! ([`frame`]), the request/response/notification envelope ([`envelope`]), the structured error
//! ([`error`]), the protocol version ([`version`]) and the typed messages of each family
//! ([`message`]). Beyond bytes it holds only what both ends need alike to move them: the
//! [`outbox`] that writes queued frames to the socket, and the table of calls awaiting answers
//! ([`pending`]). `PROTOCOL.md` beside this crate describes the
//! same bytes for people writing a plugin in another language.

pub mod depth;
pub mod envelope;
pub mod error;
pub mod frame;
pub mod message;
pub mod outbox;
mod pack;
pub mod pending;
pub mod socket;
pub mod stream;
pub mod time;
pub mod version;
pub mod when_woken;

pub use envelope::{Message, Notification, Request, Response};
pub use error::{codes, DecodeError, EncodeError, ErrorObject};
pub use frame::{FrameCodec, DEFAULT_MAX_FRAME_LEN};
pub use message::{Method, NotificationKind};
pub use version::ProtocolVersion;

/// Environment variable holding the path of the Unix socket a plugin must connect to.
pub const ENV_SOCKET: &str = "PLUGD_SOCKET";
/// Environment variable holding the one-time token a plugin must present in its handshake.
pub const ENV_TOKEN: &str = "PLUGD_TOKEN";
/// Environment variable holding the instance epoch a plugin must echo in its handshake.
pub const ENV_EPOCH: &str = "PLUGD_EPOCH";
/// Environment variable holding the plugin's name as the supervisor knows it.
pub const ENV_PLUGIN_NAME: &str = "PLUGD_PLUGIN_NAME";
/// Environment variable holding the largest frame, in bytes, the supervisor will accept.
pub const ENV_MAX_FRAME: &str = "PLUGD_MAX_FRAME";
