//! Protocol version: `major.minor`. Peers with different majors cannot talk; a newer minor only adds.

use serde::{Deserialize, Serialize};
use std::fmt;

/// A protocol version as exchanged in the handshake.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProtocolVersion {
    /// Incompatible changes bump this; a major mismatch refuses the handshake.
    pub major: u16,
    /// Compatible additions bump this; any minor of the same major is accepted.
    pub minor: u16,
}

impl ProtocolVersion {
    /// The version this crate implements.
    pub const CURRENT: ProtocolVersion = ProtocolVersion { major: 1, minor: 3 };

    /// Whether a peer speaking `other` can talk to a peer speaking `self`.
    pub fn is_compatible_with(self, other: ProtocolVersion) -> bool {
        self.major == other.major
    }
}

impl fmt::Display for ProtocolVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}", self.major, self.minor)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_major_is_compatible_other_major_is_not() {
        let v1_0 = ProtocolVersion { major: 1, minor: 1 };
        let v1_7 = ProtocolVersion { major: 1, minor: 7 };
        let v2_0 = ProtocolVersion { major: 2, minor: 0 };
        assert!(v1_0.is_compatible_with(v1_7));
        assert!(!v1_0.is_compatible_with(v2_0));
        assert_eq!(v1_7.to_string(), "1.7");
    }
}
