//! For the server's own tests: a small raw client on `ferry_protocol::tokio` (it sends exactly
//! the frames a test names, and keeps the transcript), and a server fixture in the test's
//! runtime: a temporary tree with canary files *outside* the served root, served on
//! 127.0.0.1:0, with graceful shutdown.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use bytes::Bytes;
use ferry_protocol::message::{
    Entry, FetchEnd, FetchRequest, FetchResponse, ListRequest, StatRequest,
};
use ferry_protocol::tokio::{connect, FerryCodec};
use ferry_protocol::{ClientHandshakeConfig, ErrorBody, Frame, Key, Message, RequestId};
use ferry_server::{Config, Limits, Server};
use futures::{SinkExt, StreamExt};
use tokio::net::TcpStream;
use tokio::sync::oneshot;
use tokio_util::codec::Framed;

/// Content of the canary file outside the root; must never appear in any reply.
pub const CANARY: &[u8] = b"CANARY-7f3a9c-must-never-leave-the-server";

/// How long any single expected reply may take before the test fails.
pub const REPLY_TIMEOUT: Duration = Duration::from_secs(30);

pub struct ServerFixture {
    pub addr: SocketAddr,
    pub key: Key,
    /// Holds `root/` (served) and `canary.txt` (outside).
    pub dir: tempfile::TempDir,
    stop: Option<oneshot::Sender<()>>,
    handle: tokio::task::JoinHandle<std::io::Result<()>>,
}

impl ServerFixture {
    /// A server on 127.0.0.1:0 with default limits, plaintext allowed, after `setup(root)`.
    pub async fn start(setup: impl FnOnce(&Path)) -> Self {
        Self::start_with(setup, |c| c).await
    }

    pub async fn start_with(
        setup: impl FnOnce(&Path),
        configure: impl FnOnce(Config) -> Config,
    ) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let root = dir.path().join("root");
        std::fs::create_dir(&root).expect("mkdir root");
        std::fs::write(dir.path().join("canary.txt"), CANARY).expect("canary");
        std::fs::create_dir(dir.path().join("outside")).expect("mkdir outside");
        std::fs::write(dir.path().join("outside/secret.txt"), CANARY).expect("canary 2");
        // A sibling whose name shares the root's prefix: `root` vs `root-private`.
        std::fs::create_dir(dir.path().join("root-private")).expect("mkdir sibling");
        std::fs::write(dir.path().join("root-private/secret.txt"), CANARY).expect("canary 3");
        setup(&root);
        let key = Key::generate();
        let config = configure(crate::test_config(&root, &key));
        let server = Server::bind(config).await.expect("bind");
        let addr = server.local_addrs()[0];
        let (tx, rx) = oneshot::channel();
        let handle = tokio::spawn(server.run(async move {
            let _ = rx.await;
        }));
        Self {
            addr,
            key,
            dir,
            stop: Some(tx),
            handle,
        }
    }

    pub fn root(&self) -> PathBuf {
        self.dir.path().join("root")
    }

    pub async fn client(&self) -> Client {
        Client::connect(self.addr, self.key.clone(), false)
            .await
            .expect("connect")
    }

    pub async fn plaintext_client(&self) -> Client {
        Client::connect(self.addr, self.key.clone(), true)
            .await
            .expect("connect plaintext")
    }

    /// Triggers graceful shutdown and waits for `run` to return.
    pub async fn shutdown(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        tokio::time::timeout(Duration::from_secs(60), &mut self.handle)
            .await
            .expect("server stops in time")
            .expect("server task")
            .expect("run ok");
    }

    /// Starts the shutdown without waiting.
    pub fn trigger_shutdown(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }

    pub async fn join(mut self) {
        tokio::time::timeout(Duration::from_secs(60), &mut self.handle)
            .await
            .expect("server stops in time")
            .expect("server task")
            .expect("run ok");
    }
}

/// Limits with short deadlines for tests.
pub fn short_limits() -> Limits {
    Limits {
        handshake_timeout: Duration::from_secs(2),
        frame_read_timeout: Duration::from_secs(2),
        idle_timeout: Duration::from_secs(10),
        shutdown_grace: Duration::from_secs(2),
        ..Limits::default()
    }
}

/// A fetch's reply, verified against its end frame.
#[derive(Debug)]
pub struct Fetched {
    pub response: FetchResponse,
    pub data: Vec<u8>,
    pub end: FetchEnd,
}

pub struct Client {
    pub conn: Framed<TcpStream, FerryCodec>,
    next_id: u32,
    /// Every body received, for canary checks (capped).
    pub transcript: Vec<u8>,
}

const TRANSCRIPT_CAP: usize = 8 << 20;

impl Client {
    pub async fn connect(
        addr: SocketAddr,
        key: Key,
        plaintext: bool,
    ) -> Result<Self, ferry_protocol::Error> {
        let stream = TcpStream::connect(addr).await?;
        stream.set_nodelay(true)?;
        let conn = tokio::time::timeout(
            REPLY_TIMEOUT,
            connect(stream, ClientHandshakeConfig::new(key).plaintext(plaintext)),
        )
        .await
        .map_err(|_| ferry_protocol::Error::Timeout("connecting"))??;
        Ok(Self {
            conn,
            next_id: 1,
            transcript: Vec::new(),
        })
    }

    pub fn id(&mut self) -> RequestId {
        let id = RequestId(self.next_id);
        self.next_id += 1;
        id
    }

    pub async fn send(&mut self, id: RequestId, message: Message) {
        self.conn.send((id, message)).await.expect("send");
    }

    /// The next frame, or `None` if the server closed the connection.
    pub async fn try_recv(&mut self) -> Option<Result<Frame, ferry_protocol::Error>> {
        let frame = tokio::time::timeout(REPLY_TIMEOUT, self.conn.next())
            .await
            .expect("reply within the timeout");
        if let Some(Ok(frame)) = &frame {
            if self.transcript.len() < TRANSCRIPT_CAP {
                self.transcript.extend_from_slice(&frame.body);
                self.transcript
                    .extend_from_slice(frame.header.id.0.to_string().as_bytes());
            }
        }
        frame
    }

    pub async fn recv(&mut self) -> (RequestId, Message) {
        let frame = self
            .try_recv()
            .await
            .expect("connection open")
            .expect("frame decodes");
        (frame.header.id, frame.message().expect("message decodes"))
    }

    pub async fn ping(&mut self, payload: &[u8]) -> Bytes {
        let id = self.id();
        self.send(id, Message::Ping(Bytes::copy_from_slice(payload)))
            .await;
        match self.recv().await {
            (got, Message::Pong(p)) if got == id => p,
            other => panic!("expected pong for {id}, got {other:?}"),
        }
    }

    pub async fn stat(&mut self, path: &str) -> Result<Entry, ErrorBody> {
        let id = self.id();
        self.send(
            id,
            Message::StatRequest(StatRequest::new(path).expect("path")),
        )
        .await;
        match self.recv().await {
            (got, Message::StatResponse(entry)) if got == id => Ok(entry),
            (got, Message::Error { body, .. }) if got == id => Err(body),
            other => panic!("unexpected reply to stat {id}: {other:?}"),
        }
    }

    pub async fn list(
        &mut self,
        path: &str,
        recursive: bool,
        depth: u16,
    ) -> Result<Vec<Entry>, ErrorBody> {
        let id = self.id();
        self.send(
            id,
            Message::ListRequest(ListRequest::new(path, recursive, depth).expect("path")),
        )
        .await;
        self.list_replies(id).await
    }

    pub async fn list_replies(&mut self, id: RequestId) -> Result<Vec<Entry>, ErrorBody> {
        let mut entries = Vec::new();
        for _ in 0..1_000_000 {
            match self.recv().await {
                (got, Message::ListPage(page)) if got == id => entries.extend(page.entries),
                (got, Message::ListEnd(end)) if got == id => {
                    assert_eq!(end.entries, entries.len() as u64, "list end count");
                    return Ok(entries);
                }
                (got, Message::Error { body, .. }) if got == id => return Err(body),
                other => panic!("unexpected reply to list {id}: {other:?}"),
            }
        }
        panic!("list did not end");
    }

    pub async fn fetch(
        &mut self,
        path: &str,
        offset: u64,
        length: u64,
    ) -> Result<Fetched, ErrorBody> {
        let id = self.id();
        self.send(
            id,
            Message::FetchRequest(FetchRequest::new(path, offset, length).expect("path")),
        )
        .await;
        self.fetch_replies(id).await
    }

    /// Collects one fetch's frames and checks the end frame's count and hash.
    pub async fn fetch_replies(&mut self, id: RequestId) -> Result<Fetched, ErrorBody> {
        let response = match self.recv().await {
            (got, Message::FetchResponse(r)) if got == id => r,
            (got, Message::Error { body, .. }) if got == id => return Err(body),
            other => panic!("unexpected reply to fetch {id}: {other:?}"),
        };
        let mut data = Vec::new();
        loop {
            match self.recv().await {
                (got, Message::Data(chunk)) if got == id => {
                    assert!(chunk.len() <= 64 * 1024, "chunk of {} bytes", chunk.len());
                    data.extend_from_slice(&chunk);
                }
                (got, Message::FetchEnd(end)) if got == id => {
                    assert_eq!(end.bytes, data.len() as u64, "end count");
                    assert_eq!(end.bytes, response.length, "announced length");
                    assert_eq!(
                        end.digest,
                        ferry_protocol::digest::fetch_digest(&data),
                        "end hash"
                    );
                    return Ok(Fetched {
                        response,
                        data,
                        end,
                    });
                }
                (got, Message::Error { body, .. }) if got == id => return Err(body),
                other => panic!("unexpected reply to fetch {id}: {other:?}"),
            }
        }
    }

    /// Whether the transcript contains the canary.
    pub fn saw_canary(&self) -> bool {
        self.transcript.windows(CANARY.len()).any(|w| w == CANARY)
    }
}

/// Deterministic pseudo-random test content (xorshift64), cheap even in debug builds.
pub fn pattern(len: usize, seed: u8) -> Vec<u8> {
    let mut state =
        0x9E37_79B9_7F4A_7C15u64 ^ u64::from(seed).wrapping_mul(0x2545_F491_4F6C_DD1D) | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        out.extend_from_slice(&state.to_le_bytes());
    }
    out.truncate(len);
    out
}

/// Resident set size of this process (test client and in-process server), from /proc.
pub fn rss_bytes() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").expect("proc status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map(|kb| kb * 1024)
        .expect("VmRSS")
}
