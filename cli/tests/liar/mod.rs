//! A lying Ferry server for tests: a test-only implementation of the protocol's server side
//! (the real handshake and codec from `ferry_protocol`, then whatever a test scripts), on
//! 127.0.0.1:0 in a runtime of its own, and a runner for the `ferry` binary that records its
//! exit code and peak RSS (`VmHWM` from `/proc/PID/status`).

// Test support: a failed setup step should fail the test loudly.
#![allow(dead_code, clippy::unwrap_used)]

use std::future::Future;
use std::io::Read;
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use ferry_protocol::digest::fetch_digest;
use ferry_protocol::message::{
    DigestResponse, Entry, EntryKind, FetchEnd, FetchResponse, ListEnd, ListPage,
};
use ferry_protocol::{
    ErrorBody, ErrorCode, Frame, FrameType, Key, Message, RequestId, ServerHandshakeConfig,
    Service, Session,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// A scripted server. Every accepted connection is handshaken (plaintext allowed, so bulk
/// floods cost no cipher time) and handed to the script.
pub struct Liar {
    pub addr: SocketAddr,
    pub key: Key,
    runtime: Option<tokio::runtime::Runtime>,
}

impl Liar {
    pub fn start<F, Fut>(script: F) -> Self
    where
        F: Fn(Peer) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let key = Key::generate();
        let listener = runtime.block_on(TcpListener::bind("127.0.0.1:0")).unwrap();
        let addr = listener.local_addr().unwrap();
        let script = Arc::new(script);
        let server_key = key.clone();
        runtime.spawn(async move {
            while let Ok((mut io, _)) = listener.accept().await {
                let script = script.clone();
                let mut config = ServerHandshakeConfig::new(server_key.clone());
                config.allow_plaintext = true;
                tokio::spawn(async move {
                    let Ok((session, buf)) =
                        ferry_protocol::tokio::server_handshake(&mut io, config).await
                    else {
                        return;
                    };
                    script(Peer {
                        io,
                        session,
                        buf,
                        out: BytesMut::new(),
                    })
                    .await;
                });
            }
        });
        Self {
            addr,
            key,
            runtime: Some(runtime),
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("ferry://{}/{path}", self.addr)
    }
}

impl Drop for Liar {
    fn drop(&mut self) {
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}

/// One connection, after the handshake.
pub struct Peer {
    pub io: TcpStream,
    session: Session,
    buf: BytesMut,
    out: BytesMut,
}

impl Peer {
    /// The next frame from the client, or `None` once it is gone.
    pub async fn recv(&mut self) -> Option<Frame> {
        loop {
            match self.session.read_frame(&mut self.buf) {
                Ok(Some(frame)) => return Some(frame),
                Ok(None) => {}
                Err(_) => return None,
            }
            match self.io.read_buf(&mut self.buf).await {
                Ok(0) | Err(_) => return None,
                Ok(_) => {}
            }
        }
    }

    /// The next request (pings answered, pongs and cancels skipped).
    pub async fn request(&mut self) -> Option<(RequestId, Message)> {
        loop {
            let frame = self.recv().await?;
            match frame.message().ok()? {
                Message::Ping(p) => self.send(frame.header.id, Message::Pong(p)).await,
                Message::Pong(_) | Message::Cancel { .. } | Message::Error { .. } => {}
                other => return Some((frame.header.id, other)),
            }
        }
    }

    pub async fn send(&mut self, id: RequestId, message: Message) {
        self.out.clear();
        self.session
            .write_message(id, &message, &mut self.out)
            .unwrap();
        let _ = self.io.write_all(&self.out).await;
    }

    /// Raw bytes on the wire (plaintext sessions: a hand-made frame).
    pub async fn send_raw(&mut self, bytes: &[u8]) {
        let _ = self.io.write_all(bytes).await;
    }

    /// Waits until the client goes away, reading (and discarding) what it sends.
    pub async fn drain(mut self) {
        while self.recv().await.is_some() {}
    }
}

/// A plaintext frame of any type, service and body, e.g. one no server sends.
pub fn raw_frame(kind: u8, service: u8, id: u32, body: &[u8]) -> Vec<u8> {
    let mut out = BytesMut::new();
    ferry_protocol::frame::encode_plain(
        FrameType(kind),
        Service(service),
        // The version a default client and server negotiate (spec §4.3).
        ferry_protocol::handshake::MAX_VERSION,
        RequestId(id),
        body,
        &mut out,
    );
    out.to_vec()
}

/// An entry built from its wire form, so this helper does not depend on the struct's fields
/// beyond the ones tests change.
fn wire_entry(name: &str, kind: EntryKind, size: u64) -> Entry {
    let mut body = Vec::new();
    body.extend_from_slice(&(name.len() as u16).to_be_bytes());
    body.extend_from_slice(name.as_bytes());
    body.push(kind.0);
    body.extend_from_slice(&size.to_be_bytes());
    body.extend_from_slice(&1_700_000_000i64.to_be_bytes());
    body.extend_from_slice(&0u32.to_be_bytes());
    body.extend_from_slice(&0o644u32.to_be_bytes());
    match Message::decode(FrameType::RESPONSE, Service::STAT, body.into()) {
        Ok(Message::StatResponse(entry)) => entry,
        other => panic!("not an entry: {other:?}"),
    }
}

pub fn file_entry(name: &str, size: u64) -> Entry {
    wire_entry(name, EntryKind::FILE, size)
}

pub fn dir_entry(name: &str) -> Entry {
    wire_entry(name, EntryKind::DIRECTORY, 0)
}

pub fn error(service: Service, code: ErrorCode, message: &str) -> Message {
    Message::Error {
        service,
        body: ErrorBody::new(code, message),
    }
}

/// An honest answer for a small file tree held in memory: `files` are `(path, content)`,
/// directories are implied by the paths. Returns `false` for requests it does not know.
pub async fn answer_honestly(
    peer: &mut Peer,
    id: RequestId,
    request: &Message,
    files: &[(&str, &[u8])],
) -> bool {
    let dir_of = |p: &str| {
        p.rsplit_once('/')
            .map(|(d, _)| d.to_string())
            .unwrap_or_default()
    };
    let is_dir =
        |p: &str| p.is_empty() || files.iter().any(|(f, _)| f.starts_with(&format!("{p}/")));
    let file = |p: &str| files.iter().find(|(f, _)| *f == p).map(|(_, c)| *c);
    match request {
        Message::StatRequest(r) => {
            let name = r.path.rsplit('/').next().unwrap_or("");
            let reply = match file(&r.path) {
                Some(c) => Message::StatResponse(file_entry(name, c.len() as u64)),
                None if is_dir(&r.path) => Message::StatResponse(dir_entry(name)),
                None => error(Service::STAT, ErrorCode::NOT_FOUND, "not found"),
            };
            peer.send(id, reply).await;
        }
        Message::ListRequest(r) => {
            let mut entries = Vec::new();
            let mut dirs = std::collections::BTreeSet::new();
            for (f, c) in files {
                let rel = if r.path.is_empty() {
                    Some(*f)
                } else {
                    f.strip_prefix(&format!("{}/", r.path))
                };
                let Some(rel) = rel else { continue };
                match rel.split_once('/') {
                    Some((d, _)) if !r.recursive => {
                        dirs.insert(d.to_string());
                    }
                    _ => entries.push(file_entry(rel, c.len() as u64)),
                }
                if r.recursive {
                    let mut at = rel;
                    while let Some((d, _)) = at.rsplit_once('/') {
                        dirs.insert(d.to_string());
                        at = d;
                    }
                }
            }
            entries.extend(dirs.iter().map(|d| dir_entry(d)));
            entries.sort_by(|a, b| a.name.cmp(&b.name));
            let n = entries.len() as u64;
            peer.send(id, Message::ListPage(ListPage { entries })).await;
            peer.send(id, Message::ListEnd(ListEnd { entries: n }))
                .await;
        }
        Message::FetchRequest(r) => {
            let Some(c) = file(&r.path) else {
                peer.send(id, error(Service::FETCH, ErrorCode::NOT_FOUND, "not found"))
                    .await;
                return true;
            };
            let offset = r.offset.min(c.len() as u64) as usize;
            let data = &c[offset..];
            peer.send(
                id,
                Message::FetchResponse(fetch_response(c.len() as u64, offset as u64)),
            )
            .await;
            for chunk in data.chunks(65_536) {
                peer.send(id, Message::Data(Bytes::copy_from_slice(chunk)))
                    .await;
            }
            peer.send(
                id,
                Message::FetchEnd(FetchEnd {
                    bytes: data.len() as u64,
                    digest: fetch_digest(data),
                }),
            )
            .await;
        }
        Message::DigestRequest(r) => {
            let reply = match file(&r.path) {
                Some(c) => Message::DigestResponse(DigestResponse {
                    size: c.len() as u64,
                    mtime_secs: 1_700_000_000,
                    mtime_nanos: 0,
                    digest: fetch_digest(c),
                }),
                None => error(Service::DIGEST, ErrorCode::NOT_FOUND, "not found"),
            };
            peer.send(id, reply).await;
        }
        _ => return false,
    }
    let _ = dir_of;
    true
}

pub fn fetch_response(size: u64, offset: u64) -> FetchResponse {
    FetchResponse {
        size,
        mtime_secs: 1_700_000_000,
        mtime_nanos: 0,
        offset,
        length: size - offset,
    }
}

/// What a run of `ferry` did.
#[derive(Debug)]
pub struct Run {
    pub code: i32,
    /// The first 16 MiB of stdout.
    pub stdout: String,
    pub stdout_bytes: u64,
    pub stdout_lines: u64,
    pub stderr: String,
    /// Peak resident set (VmHWM), KiB.
    pub peak_rss_kib: u64,
    pub elapsed: Duration,
}

/// The `ferry` binary under test; `LIAR_FERRY_BIN` points the suite at another build (to
/// show what an older client did).
pub fn ferry_bin() -> String {
    std::env::var("LIAR_FERRY_BIN").unwrap_or_else(|_| env!("CARGO_BIN_EXE_ferry").to_string())
}

/// Runs `ferry --plaintext --key=KEY ARGS` in `dir`, with `env`, killing it after `limit`
/// (which only bounds a failure: a run that needs it fails its test).
pub fn ferry(liar: &Liar, dir: &Path, args: &[&str], env: &[(&str, &str)], limit: Duration) -> Run {
    let home = tempfile::tempdir().unwrap();
    let mut cmd = Command::new(ferry_bin());
    cmd.env("HOME", home.path())
        .env("XDG_CONFIG_HOME", home.path().join("config"))
        .env_remove("FERRY_KEY")
        .env_remove("RUST_LOG")
        .env_remove("FERRY_MIN_PROGRESS")
        .envs(env.iter().copied())
        .current_dir(dir)
        .arg(format!("--key={}", liar.key.to_base64()))
        .arg("--plaintext")
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let started = Instant::now();
    let mut child = cmd.spawn().unwrap();
    let pid = child.id();
    let mut stdout = child.stdout.take().unwrap();
    let mut stderr = child.stderr.take().unwrap();
    let out = std::thread::spawn(move || {
        let mut kept = Vec::new();
        let (mut bytes, mut lines) = (0u64, 0u64);
        let mut buf = vec![0u8; 1 << 16];
        while let Ok(n) = stdout.read(&mut buf) {
            if n == 0 {
                break;
            }
            bytes += n as u64;
            lines += buf[..n].iter().filter(|&&b| b == b'\n').count() as u64;
            if kept.len() < 16 << 20 {
                kept.extend_from_slice(&buf[..n]);
            }
        }
        (kept, bytes, lines)
    });
    let err = std::thread::spawn(move || {
        let mut text = Vec::new();
        let _ = stderr.read_to_end(&mut text);
        text
    });
    let mut peak = 0;
    let status = loop {
        if let Some(kib) = vm_hwm(pid) {
            peak = peak.max(kib);
        }
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if started.elapsed() > limit {
            let _ = child.kill();
            break child.wait().unwrap();
        }
        std::thread::sleep(Duration::from_millis(2));
    };
    let (kept, stdout_bytes, stdout_lines) = out.join().unwrap();
    let stderr = err.join().unwrap();
    Run {
        code: status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&kept).into_owned(),
        stdout_bytes,
        stdout_lines,
        stderr: String::from_utf8_lossy(&stderr).into_owned(),
        peak_rss_kib: peak,
        elapsed: started.elapsed(),
    }
}

fn vm_hwm(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// The memory target of issue 16: 64 MiB whatever the server does.
pub const RSS_LIMIT_KIB: u64 = 64 * 1024;

/// Prints one line per mode for the report (`cargo test -- --nocapture`).
pub fn report(mode: &str, run: &Run) {
    eprintln!(
        "liar mode {mode}: exit {} peak rss {} KiB in {:.1}s",
        run.code,
        run.peak_rss_kib,
        run.elapsed.as_secs_f64()
    );
}
