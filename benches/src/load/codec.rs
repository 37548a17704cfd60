//! `ferry-load codec`: encode+decode (and, encrypted, seal+open) frames in memory on N threads,
//! per body size, and report frames/s and GB/s. No sockets: this is the codec's ceiling.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use ferry_protocol::crypto::DirectionKeys;
use ferry_protocol::{FrameType, RequestId, Role, Service, Session};
use rand::RngCore;
use serde::Serialize;

/// Settings of one codec run.
#[derive(Debug, Clone)]
pub struct CodecOptions {
    pub threads: usize,
    pub bodies: Vec<usize>,
    pub encrypted: bool,
    pub plaintext: bool,
    pub duration: Duration,
}

/// One (body size, mode) row.
#[derive(Debug, Clone, Serialize)]
pub struct CodecRow {
    pub body: usize,
    pub mode: &'static str,
    pub threads: usize,
    pub frames: u64,
    pub seconds: f64,
    pub frames_per_s: f64,
    pub gb_per_s: f64,
}

fn session_pair(encrypted: bool) -> (Session, Session) {
    if !encrypted {
        return (
            Session::plaintext(1, 1 << 20),
            Session::plaintext(1, 1 << 20),
        );
    }
    // Fresh random keys per thread: the codec's cost does not depend on them.
    let mut keys = [[0u8; 32]; 4];
    for k in &mut keys {
        rand::thread_rng().fill_bytes(k);
    }
    let c2s = DirectionKeys {
        enc: keys[0],
        mac: keys[1],
        iv: [0; 12],
    };
    let s2c = DirectionKeys {
        enc: keys[2],
        mac: keys[3],
        iv: [0; 12],
    };
    (
        Session::encrypted(1, 1 << 20, Role::Client, &c2s, &s2c),
        Session::encrypted(1, 1 << 20, Role::Server, &c2s, &s2c),
    )
}

/// Encodes and decodes frames of `body` bytes until `stop`; returns frames done.
fn worker(body: usize, encrypted: bool, stop: &AtomicBool) -> Result<u64, String> {
    let (mut sender, mut receiver) = session_pair(encrypted);
    let payload = vec![0x5Au8; body];
    let mut wire = BytesMut::with_capacity(2 * body + 256);
    let mut frames = 0u64;
    while !stop.load(Ordering::Relaxed) {
        for _ in 0..64 {
            sender
                .write_frame(
                    FrameType::DATA,
                    Service::FETCH,
                    RequestId(1),
                    &payload,
                    &mut wire,
                )
                .map_err(|e| e.to_string())?;
            match receiver.read_frame(&mut wire).map_err(|e| e.to_string())? {
                Some(frame) if frame.body.len() == body => frames += 1,
                other => return Err(format!("decoded {other:?} instead of the frame just sent")),
            }
        }
    }
    Ok(frames)
}

/// Runs every (size, mode) combination for `duration` each.
pub fn run(options: &CodecOptions) -> Result<Vec<CodecRow>, String> {
    let mut rows = Vec::new();
    let mut modes = Vec::new();
    if options.plaintext {
        modes.push(("plaintext", false));
    }
    if options.encrypted {
        modes.push(("encrypted", true));
    }
    for &body in &options.bodies {
        for &(mode, encrypted) in &modes {
            let stop = Arc::new(AtomicBool::new(false));
            let start = Instant::now();
            let handles: Vec<_> = (0..options.threads)
                .map(|_| {
                    let stop = stop.clone();
                    std::thread::spawn(move || worker(body, encrypted, &stop))
                })
                .collect();
            std::thread::sleep(options.duration);
            stop.store(true, Ordering::Relaxed);
            let mut frames = 0;
            for handle in handles {
                frames += handle
                    .join()
                    .map_err(|_| "codec worker panicked".to_string())??;
            }
            let seconds = start.elapsed().as_secs_f64();
            rows.push(CodecRow {
                body,
                mode,
                threads: options.threads,
                frames,
                seconds,
                frames_per_s: frames as f64 / seconds,
                gb_per_s: (frames * body as u64) as f64 / seconds / 1e9,
            });
        }
    }
    Ok(rows)
}

/// The table on stdout.
pub fn print(rows: &[CodecRow]) {
    println!(
        "{:>8} {:>10} {:>8} {:>14} {:>10}",
        "body", "mode", "threads", "frames/s", "GB/s"
    );
    for r in rows {
        println!(
            "{:>8} {:>10} {:>8} {:>14.0} {:>10.3}",
            r.body, r.mode, r.threads, r.frames_per_s, r.gb_per_s
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn both_modes_move_frames() {
        let rows = run(&CodecOptions {
            threads: 2,
            bodies: vec![64, 4096],
            encrypted: true,
            plaintext: true,
            duration: Duration::from_millis(50),
        })
        .unwrap();
        assert_eq!(rows.len(), 4);
        assert!(rows.iter().all(|r| r.frames > 0), "{rows:?}");
    }
}
