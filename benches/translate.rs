//! Translation throughput per format: decode, encode, decode+encode, next to a raw parse
//! of the same bytes (quick-xml events, serde_json value, split lines): the ceiling.
//!
//! `cargo bench --bench translate`

use std::hint::black_box;
use std::path::PathBuf;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use ects_gateway::config::Settings;
use ects_gateway::formats::Formats;

fn formats() -> Formats {
    let settings = Settings {
        mappings_dir: PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/mappings")),
        ..Settings::default()
    };
    ects_gateway::startup::formats(&settings).expect("the test mappings compile")
}

fn fixture(path: &str) -> Vec<u8> {
    std::fs::read(format!(
        "{}/tests/fixtures/{path}",
        env!("CARGO_MANIFEST_DIR")
    ))
    .expect("fixture")
}

fn raw_xml(bytes: &[u8]) -> usize {
    let text = std::str::from_utf8(bytes).expect("utf-8");
    let mut reader = quick_xml::reader::NsReader::from_str(text);
    let mut n = 0;
    loop {
        match reader.read_resolved_event() {
            Ok((_, quick_xml::events::Event::Eof)) | Err(_) => return n,
            Ok(_) => n += 1,
        }
    }
}

fn raw_json(bytes: &[u8]) -> usize {
    serde_json::from_slice::<serde_json::Value>(bytes)
        .map(|v| v.as_object().map_or(0, |o| o.len()))
        .unwrap_or(0)
}

fn raw_flat(bytes: &[u8]) -> usize {
    bytes
        .split(|b| *b == b'\n')
        .map(|l| l.split(|b| *b == 0x1d).count())
        .sum()
}

/// Format, fixture, target format, and the raw parse that is its ceiling.
type Case = (&'static str, &'static str, &'static str, fn(&[u8]) -> usize);

/// The shipped formats (`mappings/`) on their cases (`tests/formats/`).
fn shipped(c: &mut Criterion) {
    let settings = Settings {
        mappings_dir: PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/mappings")),
        ..Settings::default()
    };
    let formats = ects_gateway::startup::formats(&settings).expect("the mappings compile");
    let cases: [Case; 6] = [
        (
            "wco-dm",
            "wco-dm/ug-rw-transit/input.xml",
            "asycuda",
            raw_xml,
        ),
        (
            "asycuda",
            "asycuda/transit-one-container/input.xml",
            "wco-dm",
            raw_xml,
        ),
        (
            "asycuda",
            "asycuda/real-caa-tirana-import/input.xml",
            "wco-dm",
            raw_xml,
        ),
        // Read and written against ICEGATE's schema both ways.
        (
            "icegate-csn",
            "icegate-csn/ft-kolkata-birgunj/input.json",
            "wco-dm",
            raw_json,
        ),
        (
            "icegate-flat",
            "icegate-flat/s2b-two-containers/input.txt",
            "wco-dm",
            raw_flat,
        ),
        (
            "duca-t",
            "duca-t/gt-ni-two-containers-electronic/input.xml",
            "wco-dm",
            raw_xml,
        ),
    ];
    for (format, path, target, raw) in cases {
        let body = std::fs::read(format!(
            "{}/tests/formats/{path}",
            env!("CARGO_MANIFEST_DIR")
        ))
        .expect("case");
        let adapter = formats.get(format).expect("format");
        let writer = formats.get(target).expect("target");
        let mut group = c.benchmark_group(format!("shipped/{path}"));
        group.throughput(Throughput::Bytes(body.len() as u64));
        group.bench_function("raw_parse", |b| b.iter(|| raw(black_box(&body))));
        group.bench_function(format!("decode_then_encode_to_{target}"), |b| {
            b.iter(|| {
                let d = adapter.decode(black_box(&body)).expect("reads");
                writer.encode(&d.inbound.as_outbound()).expect("writes")
            })
        });
        group.finish();
    }
}

fn bench(c: &mut Criterion) {
    let formats = formats();
    let cases: [Case; 4] = [
        (
            "transit-xml",
            "transit-xml/gt-sv-full/input.xml",
            "ects-json",
            raw_xml,
        ),
        (
            "canonical-json",
            "canonical-json/gt-sv/input.json",
            "ects-json",
            raw_json,
        ),
        (
            "ects-json",
            "ects-json/declaration-gt-sv.json",
            "transit-xml",
            raw_json,
        ),
        (
            "transit-flat",
            "transit-flat/three-events/input.txt",
            "ects-json",
            raw_flat,
        ),
    ];
    for (format, path, target, raw) in cases {
        let body = fixture(path);
        let adapter = formats.get(format).expect("format");
        let writer = formats.get(target).expect("target");
        let decoded = adapter.decode(&body).expect("the fixture reads");
        let mut group = c.benchmark_group(format);
        group.throughput(Throughput::Bytes(body.len() as u64));
        group.bench_function("raw_parse", |b| b.iter(|| raw(black_box(&body))));
        group.bench_function("decode", |b| {
            b.iter(|| adapter.decode(black_box(&body)).expect("reads"))
        });
        group.bench_function("encode", |b| {
            b.iter(|| {
                adapter
                    .encode(black_box(&decoded.inbound.as_outbound()))
                    .expect("writes")
            })
        });
        group.bench_function(format!("decode_then_encode_to_{target}"), |b| {
            b.iter(|| {
                let d = adapter.decode(black_box(&body)).expect("reads");
                writer.encode(&d.inbound.as_outbound()).expect("writes")
            })
        });
        group.finish();
    }
}

criterion_group! {
    name = translate;
    config = Criterion::default().sample_size(30).measurement_time(std::time::Duration::from_secs(3));
    targets = bench, shipped
}
criterion_main!(translate);
