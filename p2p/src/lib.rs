//! The Ferry peer node (filled by the p2p issue).
