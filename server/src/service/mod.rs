//! The services (spec §3.5–§3.11): one module each, callable without a socket. A service takes
//! the connection's [`Context`] (the served [`Tree`], the client's [`Principal`], read buffers,
//! frame sizes) and one decoded request, and queues its frames, in order, into a [`Sink`].
//!
//! - [`list`]: directory pages, produced on a blocking thread one at a time.
//! - [`stat`]: one entry.
//! - [`fetch`]: a byte range, read ahead of the frames being queued.
//! - [`digest`]: a whole file's BLAKE3, cached per file version.
//! - [`echo`]: ping → pong, answered by the connection's reader itself (pings are never in
//!   flight).
//!
//! [`run`] is what a request task does: check access, run the service, log one line, and send
//! the request's error frame if it failed. Every service consults the principal before it
//! touches the tree.

mod burst;
pub(crate) mod digest;
pub(crate) mod echo;
pub(crate) mod enrol;
pub(crate) mod fetch;
pub(crate) mod list;
pub(crate) mod put;
pub(crate) mod stat;

use std::sync::Arc;

use ferry_protocol::message::{
    DigestRequest, EnrolRequest, FetchRequest, ListRequest, PutRequest, StatRequest,
};
use ferry_protocol::{ErrorBody, ErrorCode, Message, Principal, RequestId, Service};
use tokio::sync::mpsc;
use tokio::task::JoinError;
use tokio::time::Instant;

use crate::buffers::BufferPool;
use crate::config::Limits;
use crate::fs::{FsError, Jail, RelPath};

pub(crate) use digest::DigestCache;

/// A frame to send: the request id and the message.
pub(crate) type Out = (RequestId, Message);

/// The served directory tree, shared by every connection: the jail, the limits and the digest
/// cache.
#[derive(Debug)]
pub(crate) struct Tree {
    pub jail: Jail,
    pub limits: Limits,
    /// Whole-file digests by file version (spec §3.11).
    pub digests: DigestCache,
    /// Partial uploads' locks and each principal's quota use (spec §3.12).
    pub uploads: Arc<put::Uploads>,
}

impl Tree {
    pub fn new(jail: Jail, limits: Limits) -> Self {
        Self {
            jail,
            limits,
            digests: DigestCache::default(),
            uploads: Arc::default(),
        }
    }

    /// The tree a principal confined to `subtree` sees: a jail opened at that directory
    /// (through this one), sharing the upload locks and quotas; its own digest cache, since
    /// the cache's paths are relative to the jail.
    pub fn confined(&self, subtree: &str) -> Result<Self, FsError> {
        let path = RelPath::parse(subtree, self.limits.max_path_depth)?;
        Ok(Self {
            jail: self.jail.subtree(&path)?,
            limits: self.limits.clone(),
            digests: DigestCache::default(),
            uploads: self.uploads.clone(),
        })
    }
}

/// What every request of one connection needs.
#[derive(Debug, Clone)]
pub(crate) struct Context {
    pub tree: Arc<Tree>,
    /// Who the client proved to be in the handshake; consulted for every request.
    pub principal: Arc<Principal>,
    /// This connection's fetch read buffers.
    pub buffers: Arc<BufferPool>,
    /// Data bytes per frame.
    pub chunk: usize,
    /// Encoded bytes per list page.
    pub page_bytes: usize,
    /// This connection's uploads in flight, where the reader hands their frames.
    pub uploads: Arc<put::Routes>,
    /// `Some` in an enrolment session (spec §13.11.2), whose only request is ENROL.
    pub enrol: Option<Arc<enrol::EnrolSession>>,
}

impl Context {
    /// Parses a request path and checks that the principal may read it. A bad path is refused
    /// before access is considered, so both answers are the same for every principal.
    fn readable(&self, raw: &str) -> Result<RelPath, ServiceError> {
        let path = RelPath::parse(raw, self.tree.limits.max_path_depth)?;
        if !self.principal.permissions.read {
            return Err(ServiceError::Fs(FsError::PermissionDenied(path)));
        }
        Ok(path)
    }
}

/// Where one request's frames go: the connection's data queue, which is FIFO, so they reach the
/// wire in the order they were sent (connection/STATE.md).
#[derive(Debug, Clone)]
pub(crate) struct Sink {
    id: RequestId,
    queue: mpsc::Sender<Out>,
}

impl Sink {
    pub fn new(id: RequestId, queue: mpsc::Sender<Out>) -> Self {
        Self { id, queue }
    }

    /// Queues one frame, waiting for room (that is the backpressure).
    pub async fn send(&self, message: Message) -> Result<(), ServiceError> {
        self.queue
            .send((self.id, message))
            .await
            .map_err(|_| ServiceError::Closed)
    }
}

/// A decoded request.
#[derive(Debug)]
pub(crate) enum Request {
    List(ListRequest),
    Stat(StatRequest),
    Fetch(FetchRequest),
    Digest(DigestRequest),
    Put(PutRequest),
    Enrol(EnrolRequest),
}

impl Request {
    fn path(&self) -> &str {
        match self {
            Self::List(r) => &r.path,
            Self::Stat(r) => &r.path,
            Self::Fetch(r) => &r.path,
            Self::Digest(r) => &r.path,
            Self::Put(r) => &r.path,
            Self::Enrol(_) => "",
        }
    }
}

/// The service's name in logs.
pub(crate) fn name(service: Service) -> &'static str {
    match service {
        Service::LIST => "list",
        Service::STAT => "stat",
        Service::FETCH => "fetch",
        Service::ECHO => "echo",
        Service::DIGEST => "digest",
        Service::PUT => "put",
        Service::ENROL => "enrol",
        _ => "other",
    }
}

/// Why a request ended without its normal end frame.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ServiceError {
    /// Answered on the wire with the error's code.
    #[error(transparent)]
    Fs(#[from] FsError),
    /// The connection's writer is gone; nothing can be sent.
    #[error("connection closed")]
    Closed,
    /// Refused with its own code and sentence (uploads: `READ_ONLY`, `ALREADY_EXISTS`, ...).
    #[error("{1}")]
    Refused(ErrorCode, String),
    /// A bug (a blocking task panicked); the client gets `INTERNAL`.
    #[error("internal error: {0}")]
    Internal(String),
}

impl From<JoinError> for ServiceError {
    fn from(error: JoinError) -> Self {
        Self::Internal(error.to_string())
    }
}

impl From<crate::fs::PathError> for ServiceError {
    fn from(error: crate::fs::PathError) -> Self {
        Self::Fs(error.into())
    }
}

/// Runs one request to its end: the service's frames, then, if it failed, its error frame,
/// and one log line.
pub(crate) async fn run(ctx: Context, sink: Sink, service: Service, request: Request) {
    let started = Instant::now();
    let id = sink.id;
    let request = match request {
        // Its own log line and outcome: the session ends with it (spec §13.11.4).
        Request::Enrol(r) => return enrol::run(&ctx, r, &sink, id).await,
        other => other,
    };
    let path = request.path().to_owned();
    let result = match request {
        Request::List(r) => list::list(&ctx, r, &sink).await,
        Request::Stat(r) => stat::stat(&ctx, r, &sink).await,
        Request::Fetch(r) => fetch::fetch(&ctx, r, &sink).await,
        Request::Digest(r) => digest::digest(&ctx, r, &sink).await,
        Request::Put(r) => put::put(&ctx, r, &sink).await,
        Request::Enrol(_) => return,
    };
    // Whole microseconds, so logs show 774.536, not 774.5355099999999.
    let elapsed_ms = started.elapsed().as_micros() as f64 / 1000.0;
    let name = name(service);
    let body = match result {
        Ok(bytes) => {
            tracing::info!(%id, service = name, ?path, bytes, elapsed_ms, outcome = "ok", "request");
            None
        }
        Err(ServiceError::Fs(error)) => {
            let code = error.code();
            tracing::info!(%id, service = name, ?path, elapsed_ms, outcome = %code, %error, "request");
            Some(ErrorBody::new(code, error.to_string()))
        }
        Err(ServiceError::Refused(code, error)) => {
            tracing::info!(%id, service = name, ?path, elapsed_ms, outcome = %code, %error, "request");
            Some(ErrorBody::new(code, error))
        }
        Err(ServiceError::Closed) => {
            tracing::debug!(%id, service = name, ?path, elapsed_ms, "connection closed mid-request");
            None
        }
        Err(ServiceError::Internal(error)) => {
            tracing::error!(%id, service = name, ?path, %error, "request failed");
            Some(ErrorBody::from_code(ErrorCode::INTERNAL))
        }
    };
    if let Some(body) = body {
        let _ = sink.send(Message::Error { service, body }).await;
    }
}

/// A context over a temporary directory and a sink whose frames a test reads back.
#[cfg(test)]
pub(crate) mod testing {
    use super::*;
    use ferry_protocol::Permissions;

    /// A principal that may do nothing.
    pub fn nobody() -> Principal {
        Principal {
            name: "nobody".into(),
            permissions: Permissions::NONE,
            subtree: None,
        }
    }

    /// A context serving `root` to `principal`, with small chunks so that fetches span
    /// several frames.
    pub fn context(root: &std::path::Path, principal: Principal) -> Context {
        let limits = Limits::default();
        Context {
            tree: Arc::new(Tree::new(Jail::open(root).unwrap(), limits)),
            principal: Arc::new(principal),
            buffers: BufferPool::new(8, 2),
            chunk: 4,
            page_bytes: 4096,
            uploads: Arc::default(),
            enrol: None,
        }
    }

    /// A sink for request 7 with room for every frame a test produces.
    pub fn sink() -> (Sink, mpsc::Receiver<Out>) {
        let (tx, rx) = mpsc::channel(1024);
        (Sink::new(RequestId(7), tx), rx)
    }

    /// Every frame queued so far, checking each belongs to request 7.
    pub fn drain(rx: &mut mpsc::Receiver<Out>) -> Vec<Message> {
        let mut out = Vec::new();
        while let Ok((id, message)) = rx.try_recv() {
            assert_eq!(id, RequestId(7));
            out.push(message);
        }
        out
    }

    /// Runs one request through [`run`] and returns its frames.
    pub async fn answer(ctx: &Context, service: Service, request: Request) -> Vec<Message> {
        let (sink, mut rx) = sink();
        run(ctx.clone(), sink, service, request).await;
        drain(&mut rx)
    }

    /// The code of a request's only frame, which must be an error.
    pub fn error_code(frames: &[Message]) -> ErrorCode {
        match frames {
            [Message::Error { body, .. }] => body.code,
            other => panic!("expected one error frame, got {other:?}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::testing::*;
    use super::*;

    /// Every service answers a principal without read access `PERMISSION_DENIED` (spec §6.2,
    /// 0x0304), and nothing else; a bad path is still `INVALID_PATH`.
    #[tokio::test]
    async fn a_principal_without_read_access_is_denied_by_every_service() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("a"), b"hello").unwrap();
        let ctx = context(dir.path(), nobody());
        let requests = [
            (
                Service::LIST,
                Request::List(ListRequest {
                    path: "".into(),
                    recursive: false,
                    max_depth: 0,
                    links: false,
                }),
            ),
            (
                Service::STAT,
                Request::Stat(StatRequest { path: "a".into() }),
            ),
            (
                Service::FETCH,
                Request::Fetch(FetchRequest {
                    path: "a".into(),
                    offset: 0,
                    length: u64::MAX,
                }),
            ),
            (
                Service::DIGEST,
                Request::Digest(DigestRequest { path: "a".into() }),
            ),
        ];
        for (service, request) in requests {
            let frames = answer(&ctx, service, request).await;
            assert_eq!(
                error_code(&frames),
                ErrorCode::PERMISSION_DENIED,
                "{frames:?}"
            );
            assert_eq!(ErrorCode::PERMISSION_DENIED.0, 0x0304);
        }
        let frames = answer(
            &ctx,
            Service::STAT,
            Request::Stat(StatRequest {
                path: "../a".into(),
            }),
        )
        .await;
        assert_eq!(error_code(&frames), ErrorCode::INVALID_PATH);
    }

    #[tokio::test]
    async fn the_key_holder_may_read() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("a"), b"hello").unwrap();
        let ctx = context(dir.path(), Principal::key_holder());
        let frames = answer(
            &ctx,
            Service::STAT,
            Request::Stat(StatRequest { path: "a".into() }),
        )
        .await;
        assert!(
            matches!(&frames[..], [Message::StatResponse(e)] if e.size == 5),
            "{frames:?}"
        );
    }

    #[tokio::test]
    async fn a_closed_connection_ends_the_request_quietly() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("a"), b"hello").unwrap();
        let ctx = context(dir.path(), Principal::key_holder());
        let (sink, rx) = sink();
        drop(rx);
        let result = stat::stat(&ctx, StatRequest { path: "a".into() }, &sink).await;
        assert!(matches!(result, Err(ServiceError::Closed)));
    }
}
