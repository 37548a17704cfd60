//! Whole-file fetch over loopback, in one run:
//! - `ferry fetch (plaintext)` and `ferry fetch (encrypted)` through the `ferry_client` library
//!   against an in-process `ferry_server`, with the client's end-to-end digest check on;
//! - `raw TCP copy`: the same file read and written over a plain loopback socket by a simple
//!   userspace loop (256 KiB reads), the ceiling for plaintext;
//! - each record suite's ceiling, seal and open of 64 KiB bodies on one core, beside the fetch
//!   that negotiates that suite: `AES-256-GCM (1 core)` (with `ring`, as the record layer) for
//!   `ferry fetch (GCM)`, the default, and `CBC+HMAC (1 core)` for `ferry fetch (CBC+HMAC)`.
//!
//! Runs are interleaved and each case gets a warm-up; medians with min–max are printed, then
//! the ratios (targets: plaintext ≥ 0.8× raw TCP, each encrypted fetch ≥ 0.8× its own suite's
//! ceiling).
//!
//!   cargo bench -p ferry-bench --bench fetch                      # 1 GiB, 3 runs
//!   FERRY_BENCH_MB=256 FERRY_BENCH_RUNS=5 cargo bench -p ferry-bench --bench fetch

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::time::{Duration, Instant};

use ferry_bench::baseline::{cipher_mac_rate, rate};
use ferry_client::client::{Client, ClientConfig};
use ferry_protocol::crypto::RecordSuite;
use ferry_protocol::message::TO_END;
use ferry_protocol::Key;
use ferry_server::{Config, Server};

fn env_or(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// A file of `size` bytes of incompressible-looking data.
fn make_file(path: &Path, size: u64) -> std::io::Result<()> {
    let mut file = std::fs::File::create(path)?;
    let mut block = vec![0u8; 1 << 20];
    let mut state = 0x9E37_79B9_7F4A_7C15u64;
    let mut written = 0;
    while written < size {
        for chunk in block.chunks_mut(8) {
            // xorshift: cheap, and no two blocks alike.
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            chunk.copy_from_slice(&state.to_le_bytes()[..chunk.len()]);
        }
        let n = (size - written).min(block.len() as u64) as usize;
        file.write_all(&block[..n])?;
        written += n as u64;
    }
    Ok(())
}

/// Serves `path` to every connection with a plain read/write loop.
fn raw_tcp_server(path: std::path::PathBuf) -> std::io::Result<SocketAddr> {
    let listener = TcpListener::bind("127.0.0.1:0")?;
    let addr = listener.local_addr()?;
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            let path = path.clone();
            std::thread::spawn(move || -> std::io::Result<()> {
                let mut stream = stream;
                let mut file = std::fs::File::open(path)?;
                let mut buf = vec![0u8; 256 * 1024];
                loop {
                    let n = file.read(&mut buf)?;
                    if n == 0 {
                        return Ok(());
                    }
                    stream.write_all(&buf[..n])?;
                }
            });
        }
    });
    Ok(addr)
}

fn raw_tcp_fetch(addr: SocketAddr, size: u64) -> std::io::Result<f64> {
    let start = Instant::now();
    let mut stream = TcpStream::connect(addr)?;
    let mut buf = vec![0u8; 256 * 1024];
    let mut got = 0u64;
    loop {
        let n = stream.read(&mut buf)?;
        if n == 0 {
            break;
        }
        got += n as u64;
    }
    assert_eq!(got, size, "raw copy moved {got} of {size} bytes");
    Ok(size as f64 / start.elapsed().as_secs_f64())
}

/// AES-256-GCM seal and open of `chunk`-byte bodies with `ring`, as the record layer does it
/// (the 12-byte header as associated data), in bytes per second on this thread.
fn gcm_rate(chunk: usize, duration: Duration) -> f64 {
    use ring::aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_256_GCM};
    let key = UnboundKey::new(&AES_256_GCM, &[1; 32])
        .map(LessSafeKey::new)
        .unwrap_or_else(|_| unreachable!("a 32-byte key is an AES-256 key"));
    let mut buf = Vec::with_capacity(chunk);
    rate(chunk, duration, |body| {
        buf.clear();
        buf.extend_from_slice(body);
        let nonce = || Nonce::assume_unique_for_key([3; 12]);
        let aad = [7u8; 12];
        let tag = key
            .seal_in_place_separate_tag(nonce(), Aad::from(aad), &mut buf)
            .unwrap_or_else(|_| unreachable!("a 64 KiB body seals"));
        key.open_in_place_separate_tag(nonce(), Aad::from(aad), tag, &mut buf, 0..)
            .map(|p| p.len())
            .unwrap_or(0)
    })
}

/// One whole-file fetch; `suite` is the one record suite offered (plaintext or encrypted).
async fn ferry_fetch(addr: SocketAddr, key: &Key, suite: RecordSuite, size: u64) -> f64 {
    let start = Instant::now();
    let config = match suite {
        RecordSuite::Plaintext => ClientConfig::new(key.clone()).plaintext(true),
        encrypted => ClientConfig::new(key.clone()).suites(vec![encrypted]),
    };
    let client = Client::connect(addr, config)
        .await
        .unwrap_or_else(|e| panic!("connect: {e}"));
    let mut stream = client
        .fetch("big.bin", 0, TO_END)
        .await
        .unwrap_or_else(|e| panic!("fetch: {e}"));
    let mut got = 0u64;
    while let Some(chunk) = stream
        .chunk()
        .await
        .unwrap_or_else(|e| panic!("fetch: {e}"))
    {
        got += chunk.len() as u64;
    }
    assert_eq!(got, size, "ferry moved {got} of {size} bytes");
    assert!(
        stream.digest().is_some(),
        "the end-to-end hash was not verified"
    );
    size as f64 / start.elapsed().as_secs_f64()
}

fn median(values: &mut [f64]) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

fn main() -> std::io::Result<()> {
    // `cargo bench` passes `--bench`; `cargo test --benches` passes nothing useful either way.
    let size = env_or("FERRY_BENCH_MB", 1024) << 20;
    let runs = env_or("FERRY_BENCH_RUNS", 3).max(1) as usize;
    let shm = Path::new("/dev/shm");
    let dir = if shm.is_dir() {
        tempfile::tempdir_in(shm)?
    } else {
        tempfile::tempdir()?
    };
    let path = dir.path().join("big.bin");
    eprintln!(
        "fetch bench: {} MiB file in {}, {runs} runs + warm-up",
        size >> 20,
        dir.path().display()
    );
    make_file(&path, size)?;

    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let key = Key::generate();
    let ferry_addr = rt.block_on(async {
        let config = Config::new(dir.path(), key.clone())
            .listen(["127.0.0.1:0".parse().unwrap_or_else(|_| unreachable!())])
            .allow_plaintext(true);
        let server = Server::bind(config).await?;
        let addr = server.local_addrs()[0];
        tokio::spawn(server.run(std::future::pending()));
        std::io::Result::Ok(addr)
    })?;
    let raw_addr = raw_tcp_server(path.clone())?;

    let cases = [
        "raw TCP copy",
        "ferry fetch (plaintext)",
        "AES-256-GCM (1 core)",
        "ferry fetch (GCM)",
        "CBC+HMAC (1 core)",
        "ferry fetch (CBC+HMAC)",
    ];
    let mut results: Vec<Vec<f64>> = vec![Vec::new(); cases.len()];
    for run in 0..=runs {
        let rates = [
            raw_tcp_fetch(raw_addr, size)?,
            rt.block_on(ferry_fetch(ferry_addr, &key, RecordSuite::Plaintext, size)),
            gcm_rate(64 * 1024, Duration::from_millis(700)),
            rt.block_on(ferry_fetch(ferry_addr, &key, RecordSuite::Aes256Gcm, size)),
            cipher_mac_rate(64 * 1024, Duration::from_millis(700)),
            rt.block_on(ferry_fetch(
                ferry_addr,
                &key,
                RecordSuite::Aes256CbcHmacSha256,
                size,
            )),
        ];
        if run == 0 {
            continue; // warm-up
        }
        for (i, rate) in rates.into_iter().enumerate() {
            results[i].push(rate / 1e6);
        }
    }

    println!(
        "\nwhole-file fetch over loopback, {} MiB, median of {runs} interleaved runs",
        size >> 20
    );
    let mut medians = Vec::new();
    for (case, values) in cases.iter().zip(results.iter_mut()) {
        let (min, max) = (
            values.iter().copied().fold(f64::INFINITY, f64::min),
            values.iter().copied().fold(0.0, f64::max),
        );
        let m = median(values);
        medians.push(m);
        println!("{case:<26} {m:>9.1} MB/s  [{min:.1}–{max:.1}]");
    }
    let ratio = |a: usize, b: usize, target: f64| {
        let r = medians[a] / medians[b];
        let verdict = if r >= target { "meets" } else { "BELOW" };
        println!(
            "{:<52} {r:>6.3}  target {target:.1}  {verdict}",
            format!("{} / {}", cases[a], cases[b])
        );
    };
    println!();
    ratio(1, 0, 0.8);
    ratio(3, 2, 0.8);
    ratio(5, 4, 0.8);
    Ok(())
}
