//! Codec micro-benchmark: PUBLISH decode, encode and fan-out encode.
//!
//! Run: `cargo bench --bench codec` (quick: `-- --warm-up-time 1 --measurement-time 2`).
//! Each benchmark reports packets/s and bytes/s (criterion's `ElementsAndBytes`), where
//! bytes are whole encoded packets. Results and the machine are in `benches/README.md`.

use std::hint::black_box;

use bytes::{Bytes, BytesMut};
use bytestring::ByteString;
use criterion::{criterion_group, criterion_main, BatchSize, BenchmarkId, Criterion, Throughput};
use pyo3mq::codec::{encode_publish_header, Decoder, Packet, Publish, QoS};

const TOPIC: &str = "sensors/room-1/temperature";
const PAYLOAD_SIZES: [usize; 2] = [64, 1024];
const SUBSCRIBERS: u16 = 20;

/// A QoS 1 PUBLISH of `size` payload bytes, as a broker typically receives one.
fn publish(size: usize) -> Publish {
    Publish {
        dup: false,
        qos: QoS::AtLeastOnce,
        retain: false,
        topic: ByteString::from_static(TOPIC),
        pkid: Some(42),
        payload: Bytes::from((0..size).map(|i| i as u8).collect::<Vec<u8>>()),
        properties: None,
    }
}

fn label(size: usize) -> String {
    if size >= 1024 {
        format!("{}KiB", size / 1024)
    } else {
        format!("{size}B")
    }
}

fn decode(c: &mut Criterion) {
    let mut group = c.benchmark_group("publish_decode");
    let decoder = Decoder::new(1 << 20);
    for size in PAYLOAD_SIZES {
        let mut wire = BytesMut::new();
        Packet::Publish(publish(size)).encode(&mut wire).unwrap();
        let wire = wire.freeze();
        group.throughput(Throughput::ElementsAndBytes {
            elements: 1,
            bytes: wire.len() as u64,
        });
        group.bench_with_input(
            BenchmarkId::from_parameter(label(size)),
            &wire,
            |b, wire| {
                // The read buffer is filled outside the timed section, as a socket read would
                // be; the timed part is fixed-header parsing, framing, validation and the
                // zero-copy split of topic and payload.
                b.iter_batched_ref(
                    || BytesMut::from(&wire[..]),
                    |buf| decoder.decode(buf).unwrap().unwrap(),
                    BatchSize::SmallInput,
                );
            },
        );
    }
    group.finish();
}

fn encode(c: &mut Criterion) {
    let mut group = c.benchmark_group("publish_encode");
    for size in PAYLOAD_SIZES {
        let packet = Packet::Publish(publish(size));
        let mut buf = BytesMut::new();
        packet.encode(&mut buf).unwrap();
        group.throughput(Throughput::ElementsAndBytes {
            elements: 1,
            bytes: buf.len() as u64,
        });
        group.bench_with_input(
            BenchmarkId::from_parameter(label(size)),
            &packet,
            |b, packet| {
                // A reused write buffer, as a connection's writer keeps one.
                b.iter(|| {
                    buf.clear();
                    packet.encode(&mut buf).unwrap();
                    black_box(&buf);
                });
            },
        );
    }
    group.finish();
}

/// One incoming PUBLISH delivered to 20 subscribers, each with its own packet identifier.
fn fanout(c: &mut Criterion) {
    let mut group = c.benchmark_group("publish_fanout_20");
    for size in PAYLOAD_SIZES {
        let p = publish(size);
        let packet_len = p.encoded_len() as u64;
        group.throughput(Throughput::ElementsAndBytes {
            elements: u64::from(SUBSCRIBERS),
            bytes: u64::from(SUBSCRIBERS) * packet_len,
        });

        // Shared payload: per subscriber, a header written with encode_publish_header and
        // a reference-counted clone of the payload, ready for a vectored write. One header
        // buffer per fan-out, sized for 20 headers (64 bytes each is ample for this topic).
        let mut out: Vec<(Bytes, Bytes)> = Vec::with_capacity(SUBSCRIBERS.into());
        group.bench_with_input(BenchmarkId::new("shared", label(size)), &p, |b, p| {
            b.iter(|| {
                out.clear();
                let mut headers = BytesMut::with_capacity(usize::from(SUBSCRIBERS) * 64);
                for pkid in 1..=SUBSCRIBERS {
                    encode_publish_header(
                        &mut headers,
                        &p.topic,
                        QoS::AtLeastOnce,
                        false,
                        false,
                        Some(pkid),
                        p.payload.len(),
                    )
                    .unwrap();
                    out.push((headers.split().freeze(), p.payload.clone()));
                }
                black_box(&out);
            });
        });

        // Baseline: every subscriber gets a full copy, payload included, appended to a
        // reused write buffer.
        let mut buf = BytesMut::new();
        group.bench_with_input(BenchmarkId::new("copied", label(size)), &p, |b, p| {
            b.iter(|| {
                buf.clear();
                for pkid in 1..=SUBSCRIBERS {
                    let mut copy = p.clone();
                    copy.pkid = Some(pkid);
                    Packet::Publish(copy).encode(&mut buf).unwrap();
                }
                black_box(&buf);
            });
        });
    }
    group.finish();
}

criterion_group!(benches, decode, encode, fanout);
criterion_main!(benches);
