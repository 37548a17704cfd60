//! Which kind of path a Ferry connection runs over, for `ferry ping` and `-v` logs.

use std::fmt;

/// How a connection reached its peer (issue 12: "what path is in use is visible").
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Path {
    /// A plain TCP connection to one of the peer's hints (spec §13.8), no NAT traversal.
    Direct,
    /// A TCP connection made by simultaneous open through the NATs (spec §14.3).
    PunchedTcp,
    /// A QUIC connection over a punched UDP path (spec §14.4).
    PunchedQuic,
    /// Forwarded by a relay (the hub); the relay sees only ciphertext.
    Relayed,
}

impl Path {
    /// True for every path that does not go through a relay.
    pub fn is_direct(self) -> bool {
        !matches!(self, Path::Relayed)
    }
}

impl fmt::Display for Path {
    /// The words `ferry ping` prints: `direct`, `punched (tcp)`, `punched (quic)`, `relayed`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Path::Direct => "direct",
            Path::PunchedTcp => "punched (tcp)",
            Path::PunchedQuic => "punched (quic)",
            Path::Relayed => "relayed",
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn display_names_each_path() {
        let shown: Vec<String> = [
            Path::Direct,
            Path::PunchedTcp,
            Path::PunchedQuic,
            Path::Relayed,
        ]
        .iter()
        .map(ToString::to_string)
        .collect();
        assert_eq!(
            shown,
            ["direct", "punched (tcp)", "punched (quic)", "relayed"]
        );
        assert!(Path::PunchedQuic.is_direct());
        assert!(!Path::Relayed.is_direct());
    }
}
