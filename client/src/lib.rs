//! The Ferry client library (filled by the client issue).
