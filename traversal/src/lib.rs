//! Getting a connection through NATs (issue 12): TCP simultaneous open and QUIC over a punched
//! UDP path, each handing back a byte stream that carries ordinary Ferry frames, so the
//! end-to-end identity handshake runs over it unchanged.
