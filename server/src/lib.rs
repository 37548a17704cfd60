//! The Ferry server (filled by the server issue).
