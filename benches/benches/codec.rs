//! Codec benchmarks: header encode/decode, and frame encode+decode for 64 B, 4 KiB and 64 KiB
//! bodies, plaintext and encrypted, each beside its baseline in the same group:
//! - `memcpy`: copying the same bytes once — the floor for plaintext framing;
//! - `raw_cipher_mac`: AES-256-CBC encrypt + HMAC-SHA256 and verify + decrypt of the same bytes,
//!   using the crates directly — the floor for encrypted framing.
//!
//! After the run it prints `baseline time / candidate time` per size (targets: plaintext
//! ≥ 0.5× memcpy, encrypted ≥ 0.8× raw cipher+MAC, one core).

use std::hint::black_box;

use bytes::BytesMut;
use criterion::{BenchmarkId, Criterion, Throughput};
use ferry_bench::baseline::raw_cipher_mac;
use ferry_bench::ratios::{criterion_dir, print_report, Comparison};
use ferry_protocol::{FrameType, Header, RequestId, Service, Session};

const SIZES: [(&str, usize); 3] = [("64B", 64), ("4KiB", 4096), ("64KiB", 65_536)];

fn bench_header(c: &mut Criterion) {
    let mut group = c.benchmark_group("header");
    let header = Header::new(FrameType::DATA, Service::FETCH, RequestId(42), 65_536);
    group.bench_function("encode", |b| {
        b.iter(|| black_box(black_box(&header).to_bytes()))
    });
    let bytes = header.to_bytes();
    group.bench_function("decode", |b| {
        b.iter(|| black_box(Header::decode(black_box(&bytes[..]))))
    });
    group.finish();
}

fn bench_frames(c: &mut Criterion) {
    for (name, size) in SIZES {
        let body = vec![0xA5u8; size];
        let mut group = c.benchmark_group(format!("frame-{name}"));
        group.throughput(Throughput::Bytes(size as u64));

        let mut dst = vec![0u8; size];
        group.bench_function("memcpy", |b| {
            b.iter(|| {
                dst.copy_from_slice(black_box(&body));
                black_box(&dst);
            })
        });

        let mut buf = Vec::with_capacity(size + 32);
        group.bench_function("raw_cipher_mac", |b| {
            b.iter(|| black_box(raw_cipher_mac(black_box(&body), &mut buf)))
        });

        for (label, encrypted) in [("plaintext", false), ("encrypted", true)] {
            let (mut sender, mut receiver) = Session::dangerous_pair_with_fixed_keys(encrypted);
            let mut wire = BytesMut::with_capacity(2 * size + 128);
            group.bench_function(BenchmarkId::from_parameter(label), |b| {
                b.iter(|| {
                    sender
                        .write_frame(
                            FrameType::DATA,
                            Service::FETCH,
                            RequestId(1),
                            black_box(&body),
                            &mut wire,
                        )
                        .unwrap_or_else(|e| panic!("encode failed: {e}"));
                    let frame = receiver
                        .read_frame(&mut wire)
                        .unwrap_or_else(|e| panic!("decode failed: {e}"));
                    black_box(frame);
                })
            });
        }
        group.finish();
    }
}

/// Eight 64 KiB frames per iteration, as the server's writer seals a burst of fetch data:
/// one at a time versus together (interleaved CBC chains), beside eight raw cipher+MAC runs.
fn bench_batched(c: &mut Criterion) {
    const FRAMES: usize = 8;
    let size = 65_536;
    let body = vec![0xA5u8; size];
    let mut group = c.benchmark_group("frames-8x64KiB");
    group.throughput(Throughput::Bytes((FRAMES * size) as u64));
    let mut buf = Vec::with_capacity(size + 32);
    group.bench_function("raw_cipher_mac", |b| {
        b.iter(|| {
            for _ in 0..FRAMES {
                black_box(raw_cipher_mac(black_box(&body), &mut buf));
            }
        })
    });
    for batched in [false, true] {
        let (sender, mut receiver) = Session::dangerous_pair_with_fixed_keys(true);
        let (mut send, _) = sender.into_split();
        let mut wire = BytesMut::with_capacity(FRAMES * (size + 128));
        let frames: Vec<_> = (0..FRAMES)
            .map(|i| {
                (
                    FrameType::DATA,
                    Service::FETCH,
                    RequestId(i as u32),
                    &body[..],
                )
            })
            .collect();
        let name = if batched {
            "encrypted_together"
        } else {
            "encrypted_one_by_one"
        };
        group.bench_function(name, |b| {
            b.iter(|| {
                if batched {
                    send.write_frames(&frames, &mut wire)
                        .unwrap_or_else(|e| panic!("encode failed: {e}"));
                } else {
                    for &(kind, service, id, body) in &frames {
                        send.write_frame(kind, service, id, body, &mut wire)
                            .unwrap_or_else(|e| panic!("encode failed: {e}"));
                    }
                }
                for _ in 0..FRAMES {
                    let frame = receiver
                        .read_frame(&mut wire)
                        .unwrap_or_else(|e| panic!("decode failed: {e}"));
                    black_box(frame);
                }
            })
        });
    }
    group.finish();
}

fn main() {
    let mut criterion = Criterion::default().configure_from_args();
    bench_header(&mut criterion);
    bench_frames(&mut criterion);
    bench_batched(&mut criterion);
    criterion.final_summary();

    let mut comparisons = Vec::new();
    for (name, _) in SIZES {
        // The issue sets targets for 64 KiB bodies; smaller sizes show per-frame overhead.
        let is_target_size = name == "64KiB";
        let group = format!("frame-{name}");
        comparisons.push(Comparison {
            group: group.clone(),
            candidate: "plaintext".into(),
            baseline: "memcpy".into(),
            target: is_target_size.then_some(0.5),
        });
        comparisons.push(Comparison {
            group,
            candidate: "encrypted".into(),
            baseline: "raw_cipher_mac".into(),
            target: is_target_size.then_some(0.8),
        });
    }
    comparisons.push(Comparison {
        group: "frames-8x64KiB".into(),
        candidate: "encrypted_together".into(),
        baseline: "raw_cipher_mac".into(),
        target: Some(0.8),
    });
    comparisons.push(Comparison {
        group: "frames-8x64KiB".into(),
        candidate: "encrypted_together".into(),
        baseline: "encrypted_one_by_one".into(),
        target: None,
    });
    print_report(
        "codec ratios (baseline time / candidate time, same run, one core)",
        &criterion_dir(),
        &comparisons,
    );
}
