//! Test support shared by the crates' integration tests (dev-only, never published): a real
//! ferry-server in its own runtime (so it can be killed outright, like a crashed process), a
//! throttling and cutting TCP proxy, deterministic data and a small served tree; and in
//! [`fixture`], the server tests' in-runtime server with canaries and a raw protocol client.
//!
//! Everything binds 127.0.0.1 port 0; nothing reaches another host.

// Test support: a failed setup step should fail the test loudly.
#![allow(clippy::unwrap_used, missing_debug_implementations)]

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use ferry_protocol::Key;

pub mod fixture;

/// A server on 127.0.0.1:0 serving `root`, in a runtime of its own.
pub struct TestServer {
    pub addr: SocketAddr,
    pub key: Key,
    pub root: PathBuf,
    runtime: Option<tokio::runtime::Runtime>,
}

impl TestServer {
    pub fn start(root: &Path, key: &Key) -> Self {
        Self::start_on(root, key, "127.0.0.1:0".parse().unwrap())
    }

    /// Like [`TestServer::start`] on a given address (to restart on the same port).
    pub fn start_on(root: &Path, key: &Key, addr: SocketAddr) -> Self {
        Self::start_with(root, key, addr, |_| {})
    }

    /// Like [`TestServer::start_on`], with a chance to change the configuration.
    pub fn start_with(
        root: &Path,
        key: &Key,
        addr: SocketAddr,
        tweak: impl FnOnce(&mut ferry_server::Config),
    ) -> Self {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let mut config = test_config(root, key).listen([addr]);
        tweak(&mut config);
        let server = runtime
            .block_on(ferry_server::Server::bind(config))
            .unwrap();
        let addr = server.local_addrs()[0];
        runtime.spawn(server.run(std::future::pending()));
        Self {
            addr,
            key: key.clone(),
            root: root.to_path_buf(),
            runtime: Some(runtime),
        }
    }

    /// Stops the server at once, connections and all, as if the process died. Returns once
    /// its tasks are dropped, so the listening port is free again: `shutdown_background`
    /// returned before that, and a restart on the same port (`start_on`) could then fail with
    /// AddrInUse on a loaded machine.
    pub fn kill(mut self) {
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_timeout(Duration::from_secs(10));
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("ferry://{}/{path}", self.addr)
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}

/// The configuration every test server starts from: `root` with `key` on 127.0.0.1:0,
/// plaintext allowed so tests can read the wire.
pub fn test_config(root: &Path, key: &Key) -> ferry_server::Config {
    ferry_server::Config::new(root, key.clone())
        .listen(["127.0.0.1:0".parse().unwrap()])
        .allow_plaintext(true)
}

/// A one-connection-at-a-time TCP proxy to `upstream`. Server-to-client bytes are paced to
/// `rate` bytes per second, and after `budget` of them both sockets are cut, as if the network
/// dropped. The proxy stops accepting after 60 s.
pub struct Proxy {
    pub addr: SocketAddr,
    pub forwarded: Arc<std::sync::atomic::AtomicU64>,
    stop: Arc<AtomicBool>,
}

impl Proxy {
    pub fn start(upstream: SocketAddr, rate: u64, budget: u64) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let addr = listener.local_addr().unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let forwarded = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let (stop2, forwarded2) = (stop.clone(), forwarded.clone());
        std::thread::spawn(move || {
            let deadline = Instant::now() + Duration::from_secs(60);
            while Instant::now() < deadline && !stop2.load(Ordering::SeqCst) {
                match listener.accept() {
                    Ok((client, _)) => {
                        client.set_nonblocking(false).unwrap();
                        let Ok(server) = TcpStream::connect(upstream) else {
                            continue;
                        };
                        pipe(
                            client,
                            server,
                            rate,
                            budget,
                            forwarded2.clone(),
                            stop2.clone(),
                        );
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(5)),
                }
            }
        });
        Self {
            addr,
            forwarded,
            stop,
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("ferry://{}/{path}", self.addr)
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
    }
}

fn pipe(
    client: TcpStream,
    server: TcpStream,
    rate: u64,
    budget: u64,
    forwarded: Arc<std::sync::atomic::AtomicU64>,
    stop: Arc<AtomicBool>,
) {
    let (mut c_read, mut s_write) = (client.try_clone().unwrap(), server.try_clone().unwrap());
    std::thread::spawn(move || {
        let mut buf = [0u8; 16 * 1024];
        while let Ok(n) = c_read.read(&mut buf) {
            if n == 0 || s_write.write_all(&buf[..n]).is_err() {
                break;
            }
        }
        let _ = s_write.shutdown(Shutdown::Write);
    });
    let (mut s_read, mut c_write) = (server, client);
    std::thread::spawn(move || {
        let started = Instant::now();
        let mut sent = 0u64;
        let mut buf = [0u8; 8 * 1024];
        loop {
            if stop.load(Ordering::SeqCst) || sent >= budget {
                break;
            }
            let want = buf.len().min((budget - sent) as usize);
            let n = match s_read.read(&mut buf[..want]) {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            };
            if c_write.write_all(&buf[..n]).is_err() {
                break;
            }
            sent += n as u64;
            forwarded.fetch_add(n as u64, Ordering::SeqCst);
            // Pace: sleep until `sent` bytes are due at `rate`.
            let due = Duration::from_secs_f64(sent as f64 / rate as f64);
            if let Some(wait) = due.checked_sub(started.elapsed()) {
                std::thread::sleep(wait);
            }
        }
        let _ = c_write.shutdown(Shutdown::Both);
        let _ = s_read.shutdown(Shutdown::Both);
    });
}

/// Runs an async test body on a runtime of its own: a [`TestServer`] has its own runtime too,
/// so tests start the server first, then run their body here.
pub fn block_on<F: std::future::Future>(f: F) -> F::Output {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
        .block_on(f)
}

/// Deterministic pseudo-random bytes (xorshift), so failures are reproducible.
pub fn data(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

/// A small served tree:
/// ```text
/// a.txt            "alpha\n"
/// docs/readme.md   "# docs\n"
/// docs/deep/x.bin  3000 bytes
/// big.bin          `big` bytes
/// ```
pub fn tree(root: &Path, big: usize) {
    std::fs::create_dir_all(root.join("docs/deep")).unwrap();
    std::fs::write(root.join("a.txt"), b"alpha\n").unwrap();
    std::fs::write(root.join("docs/readme.md"), b"# docs\n").unwrap();
    std::fs::write(root.join("docs/deep/x.bin"), data(3000, 7)).unwrap();
    std::fs::write(root.join("big.bin"), data(big, 42)).unwrap();
}

/// Waits until `f` holds, at most `timeout`.
pub fn wait_for(timeout: Duration, mut f: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if f() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    f()
}
