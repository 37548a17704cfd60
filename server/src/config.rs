//! Library configuration: what to serve, where, with which key, and the limits that keep one
//! client from hurting the others. `Default`-style constructors plus public fields and
//! chainable setters; the CLI and the TOML file live in `main.rs`.

use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use ferry_protocol::{Key, KeyResolver, DEFAULT_MAX_BODY};

/// The port used when none is given.
pub const DEFAULT_PORT: u16 = 6789;

/// Everything [`crate::Server::bind`] needs.
#[derive(Debug, Clone)]
pub struct Config {
    /// Directory tree to serve. Nothing outside it is ever opened.
    pub root: PathBuf,
    /// Addresses to listen on; port 0 picks a free port. Default: `127.0.0.1:6789`.
    pub listen: Vec<SocketAddr>,
    /// Pre-shared key clients must hold.
    pub key: Key,
    /// Who may connect and what each may do, chosen per client at the handshake. Default
    /// (`None`): one principal, the holder of `key`, who may read the whole root.
    pub resolver: Option<Arc<dyn KeyResolver>>,
    /// Accept clients asking for plaintext sessions. Default: off.
    pub allow_plaintext: bool,
    /// The server's node identity: when set, the same port also serves the identity handshake
    /// (spec §13), and clients can name this server as `ferry://ID@HOST/`. Default: `None`
    /// (PSK only).
    pub identity: Option<ferry_protocol::identity::Identity>,
    /// Who may connect with the identity handshake and as whom. Default (`None`): every
    /// identity, named by its id, may read the whole root.
    pub identity_resolver: Option<Arc<dyn ferry_protocol::noise::IdentityResolver>>,
    /// Take enrolments with one-time codes (spec §13.11; with [`Config::identity`]): the
    /// invites directory and the authorised-clients file enrolled clients are added to.
    /// Default: `None`, a client asking to enrol is refused like any other failure.
    pub enrolment: Option<crate::invite::Enrolment>,
    /// Follow symlinks that stay inside the root (default). When false no symlink is ever
    /// followed, as on kernels without `openat2`.
    pub follow_symlinks: bool,
    /// Let the single key's holder upload (spec §3.12; `--allow-upload`). Default: off, so a
    /// key holder may only read. A [`Config::resolver`] decides per principal instead.
    pub allow_upload: bool,
    /// Record suites accepted, the client's preference choosing among them (spec §4.3).
    /// Default: AES-256-GCM and AES-256-CBC + HMAC-SHA256 (`--suite gcm`); CBC + HMAC alone
    /// with `--suite cbc-hmac`.
    pub suites: Vec<ferry_protocol::crypto::RecordSuite>,
    pub limits: Limits,
}

impl Config {
    /// Serves `root` on `127.0.0.1:6789`, encrypted only, with default limits.
    pub fn new(root: impl Into<PathBuf>, key: Key) -> Self {
        Self {
            root: root.into(),
            listen: vec![SocketAddr::from((Ipv4Addr::LOCALHOST, DEFAULT_PORT))],
            key,
            resolver: None,
            allow_plaintext: false,
            identity: None,
            identity_resolver: None,
            enrolment: None,
            follow_symlinks: true,
            allow_upload: false,
            suites: ferry_protocol::crypto::RecordSuite::DEFAULT_SUITES.to_vec(),
            limits: Limits::default(),
        }
    }

    /// Accepts only these record suites (see [`Config::suites`]).
    pub fn suites(mut self, suites: Vec<ferry_protocol::crypto::RecordSuite>) -> Self {
        self.suites = suites;
        self
    }

    /// Replaces the listen addresses.
    pub fn listen(mut self, addrs: impl IntoIterator<Item = SocketAddr>) -> Self {
        self.listen = addrs.into_iter().collect();
        self
    }

    /// Keys and principals per client instead of the single key's holder.
    pub fn key_resolver(mut self, resolver: Arc<dyn KeyResolver>) -> Self {
        self.resolver = Some(resolver);
        self
    }

    /// Serves the identity handshake too, as `identity`.
    pub fn identity(mut self, identity: ferry_protocol::identity::Identity) -> Self {
        self.identity = Some(identity);
        self
    }

    /// Decides per client identity who it is (with [`Config::identity`]).
    pub fn identity_resolver(
        mut self,
        resolver: Arc<dyn ferry_protocol::noise::IdentityResolver>,
    ) -> Self {
        self.identity_resolver = Some(resolver);
        self
    }

    /// Takes enrolments (see [`Config::enrolment`]).
    pub fn enrolment(mut self, enrolment: crate::invite::Enrolment) -> Self {
        self.enrolment = Some(enrolment);
        self
    }

    pub fn allow_plaintext(mut self, allow: bool) -> Self {
        self.allow_plaintext = allow;
        self
    }

    pub fn follow_symlinks(mut self, follow: bool) -> Self {
        self.follow_symlinks = follow;
        self
    }

    pub fn allow_upload(mut self, allow: bool) -> Self {
        self.allow_upload = allow;
        self
    }

    pub fn limits(mut self, limits: Limits) -> Self {
        self.limits = limits;
        self
    }
}

/// Resource limits and deadlines. Every field has a sane default (see [`Limits::default`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limits {
    /// Concurrent connections, authenticated or not. When all are taken, a newcomer evicts a
    /// connection still in its handshake (see `admission`); only when every one is
    /// authenticated is it refused with `BUSY`. Default 512.
    pub max_connections: usize,
    /// Connections still in their handshake, a pool of its own like OpenSSH's `MaxStartups`:
    /// when full, a newcomer evicts the oldest one that has sent nothing (else the oldest).
    /// Default 256; at most `max_connections`.
    pub max_pending: usize,
    /// Connections in their handshake from one address (IPv6: one /64); a newcomer beyond it
    /// evicts one of that address's own. Default 64; at most `max_pending`.
    pub max_pending_per_address: usize,
    /// Requests in flight on one connection; more get `BUSY` for that id. Default 32.
    pub max_in_flight_per_connection: usize,
    /// Time for a new connection to complete the handshake. Default 10 s.
    pub handshake_timeout: Duration,
    /// A connection with nothing in flight and no frame for this long is closed. Default 5 min.
    pub idle_timeout: Duration,
    /// Once a frame has started arriving, the rest must arrive within this (slowloris
    /// defence). Default 30 s.
    pub frame_read_timeout: Duration,
    /// A write to the client that makes no progress for this long closes the connection.
    /// Default 60 s.
    pub write_timeout: Duration,
    /// Largest frame body accepted, in wire bytes. Default 1 MiB ([`DEFAULT_MAX_BODY`]).
    pub max_body: u32,
    /// Data bytes per fetch frame. Default 64 KiB; capped to what a frame can carry.
    pub chunk_size: usize,
    /// File bytes read per blocking read of a fetch (a multiple of `chunk_size` is best).
    /// Default 512 KiB.
    pub read_size: usize,
    /// Read buffers one connection may hold, whatever its number of fetches; with
    /// `read_size` this bounds a connection's fetch memory. Default 8 (4 MiB).
    pub read_buffers_per_connection: usize,
    /// After a shutdown request, how long in-flight requests may run before connections are
    /// cut. Default 10 s.
    pub shutdown_grace: Duration,
    /// Most components in a request path. Default 64.
    pub max_path_depth: usize,
    /// Deepest recursive listing, in levels below the listed directory. Default 32.
    pub max_list_depth: u16,
    /// Bytes of names a listing holds in memory per open directory (see `fs::list`).
    /// Default 1 MiB.
    pub list_batch_bytes: usize,
    /// Encoded size of one list page. Default 64 KiB.
    pub list_page_bytes: usize,
    /// Largest file one upload may announce; larger ones get `TOO_LARGE`. Default: no limit.
    pub max_upload_size: u64,
    /// Bytes each principal may upload per server run (counted as received, whether or not
    /// the upload completes); past it, uploads get `QUOTA_EXCEEDED`. Default: no limit.
    pub upload_quota: u64,
    /// Uploads in flight on one connection; more get `BUSY`. With the 4 MiB window each may
    /// buffer, this bounds a connection's upload memory. Default 4.
    pub max_uploads_per_connection: usize,
    /// Tests only: each connection's send direction starts as if this many AES blocks had
    /// been sealed under its key, to reach the GCM usage limit's close-soon point (spec §5.5)
    /// without sending 1 TiB. Default 0.
    #[doc(hidden)]
    pub assume_blocks_used: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_connections: 512,
            max_pending: 256,
            max_pending_per_address: 64,
            max_in_flight_per_connection: 32,
            handshake_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(300),
            frame_read_timeout: Duration::from_secs(30),
            write_timeout: Duration::from_secs(60),
            max_body: DEFAULT_MAX_BODY,
            chunk_size: 64 * 1024,
            read_size: 512 * 1024,
            read_buffers_per_connection: 8,
            shutdown_grace: Duration::from_secs(10),
            max_path_depth: 64,
            max_list_depth: 32,
            list_batch_bytes: 1 << 20,
            list_page_bytes: 64 * 1024,
            max_upload_size: u64::MAX,
            upload_quota: u64::MAX,
            max_uploads_per_connection: 4,
            assume_blocks_used: 0,
        }
    }
}
