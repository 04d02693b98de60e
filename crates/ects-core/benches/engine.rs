//! Engine benchmarks: position events through 10,000 active trips on a 5,000-vertex
//! corridor, one corridor check, and the memory an active trip holds.
//!
//! `cargo bench -p ects-core --bench engine`

use std::alloc::{GlobalAlloc, Layout, System};
use std::hint::black_box;
use std::sync::Arc;
use std::sync::atomic::{AtomicIsize, Ordering};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use ects_core::engine::Engine;
use ects_core::geo::{Corridor, Zone, ZoneKind, ZoneShape};
use ects_core::spatial::{CorridorIndex, Geography};
use ects_core::trip::{Rules, RulesOverride};
use ects_core::*;

/// Counts live heap bytes, to measure what a trip holds.
struct Counting;

static LIVE: AtomicIsize = AtomicIsize::new(0);

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        LIVE.fetch_add(layout.size() as isize, Ordering::Relaxed);
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE.fetch_sub(layout.size() as isize, Ordering::Relaxed);
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        LIVE.fetch_add(
            new_size as isize - layout.size() as isize,
            Ordering::Relaxed,
        );
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

const TRIPS: usize = 10_000;
const VERTICES: usize = 5_000;
const LAT0: f64 = 10.0;
const LON0: f64 = 0.0;
/// About 200 m between vertices (a 1,000 km corridor), with a gentle zigzag.
const STEP_DEG: f64 = 0.0018;

fn ll(lat: f64, lon: f64) -> LatLon {
    LatLon::new(lat, lon).unwrap()
}

fn vertex(i: usize) -> LatLon {
    let wiggle = if i % 2 == 0 { 0.0 } else { 0.0005 };
    ll(LAT0 + wiggle, LON0 + i as f64 * STEP_DEG)
}

fn corridor() -> Corridor {
    Corridor {
        id: CorridorId::parse("BENCH").unwrap(),
        width_m: 2000.0,
        line: (0..VERTICES).map(vertex).collect(),
        office_of_departure: None,
        office_of_destination: None,
        rules: RulesOverride::default(),
    }
}

fn geography() -> Geography {
    let office = |id: &str, lon: f64| Zone {
        id: ZoneId::parse(id).unwrap(),
        kind: ZoneKind::CustomsOffice,
        office_code: Some(OfficeCode::parse(id).unwrap()),
        shape: ZoneShape::Circle {
            centre: ll(LAT0, lon),
            radius_m: 1000.0,
        },
    };
    // Rest areas every 50 km, as a real corridor has.
    let mut zones = vec![
        office("AAORG", LON0),
        office("AADST", LON0 + VERTICES as f64 * STEP_DEG),
    ];
    for k in 1..20 {
        zones.push(Zone {
            id: ZoneId::parse(format!("REST{k}")).unwrap(),
            kind: ZoneKind::RestArea,
            office_code: None,
            shape: ZoneShape::Circle {
                centre: ll(LAT0, LON0 + k as f64 * 0.45),
                radius_m: 300.0,
            },
        });
    }
    Geography::new(vec![corridor()], zones)
}

fn t0() -> DateTime<Utc> {
    "2026-03-14T08:00:00Z".parse().unwrap()
}

fn declaration(i: usize) -> TransitDeclaration {
    serde_json::from_value(serde_json::json!({
        "declaration_id": format!("BENCH-{i}"),
        "issuing_authority": "AA",
        "declared_at": "2026-03-14T07:00:00Z",
        "office_of_departure": {"code": "AAORG", "country": "AA"},
        "office_of_destination": {"code": "AADST", "country": "AA"},
        "corridor_id": "BENCH",
        "equipment": [{"id": format!("CONT{i}"), "seals": [
            {"id": format!("ES{i}"), "kind": "electronic", "device_id": format!("D{i}")}
        ]}]
    }))
    .unwrap()
}

fn event(trip: usize, seq: u64, minutes: i64, point: LatLon, kind: SealEventKind) -> SealEvent {
    SealEvent {
        event_id: None,
        device_id: DeviceId::parse(format!("D{trip}")).unwrap(),
        seal_id: None,
        seq: Some(seq),
        time: t0() + chrono::Duration::minutes(minutes),
        kind,
        position: Some(
            serde_json::from_value(serde_json::json!({"lat": point.lat, "lon": point.lon,
                                                       "speed_kmh": 60.0, "fix": "gps"}))
            .unwrap(),
        ),
        battery_pct: Some(80),
        raw: None,
        key_id: None,
        signature: None,
    }
}

/// 10,000 trips, armed at the office and spread along the corridor, in transit.
fn engine(geo: Arc<Geography>) -> Engine {
    let mut engine = Engine::new(geo, Rules::default()).keep_history(false);
    for i in 0..TRIPS {
        engine.declare(
            TripId(uuid::Uuid::from_u128(i as u128 + 1)),
            declaration(i),
            t0(),
        );
        engine.apply_event(event(i, 1, 0, ll(LAT0, LON0), SealEventKind::Locked), t0());
        engine.apply_event(
            event(i, 2, 1, position_of(i, 1), SealEventKind::Position),
            t0(),
        );
    }
    engine
}

/// Where trip `i` is after `round` minutes: spread over the corridor, moving east 1 km a minute.
fn position_of(i: usize, round: u64) -> LatLon {
    let start = (i * (VERTICES - 600) / TRIPS) as f64 * STEP_DEG + 0.02;
    ll(LAT0 + 0.0002, LON0 + start + round as f64 * 0.0091)
}

fn benches(c: &mut Criterion) {
    let geo = Arc::new(geography());

    // Memory: what 10,000 active trips hold beyond the shared geometry.
    let before = LIVE.load(Ordering::Relaxed);
    let mut engine = engine(geo.clone());
    let after = LIVE.load(Ordering::Relaxed);
    let per_trip = (after - before) as f64 / TRIPS as f64;
    let before_geo = LIVE.load(Ordering::Relaxed);
    let shared = Arc::new(geography());
    let geo_bytes = LIVE.load(Ordering::Relaxed) - before_geo;
    drop(shared);
    eprintln!(
        "memory: {per_trip:.0} bytes per active trip (engine, routing and trip state, no input history); \
         shared geometry {:.1} MiB for a {VERTICES}-vertex corridor and {} zones",
        geo_bytes as f64 / 1_048_576.0,
        geo.zones.len()
    );

    let mut group = c.benchmark_group("engine");
    group.throughput(Throughput::Elements(1));
    let mut round: u64 = 2;
    group.bench_function("position_event_10k_trips_5k_vertex_corridor", |b| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            let mut done = 0;
            while done < iters {
                // A round: every trip reports once, a minute after its last report.
                let n = (iters - done).min(TRIPS as u64) as usize;
                let events: Vec<SealEvent> = (0..n)
                    .map(|i| {
                        event(
                            i,
                            round + 1,
                            round as i64,
                            position_of(i, round),
                            SealEventKind::Position,
                        )
                    })
                    .collect();
                let now = t0() + chrono::Duration::minutes(round as i64);
                let start = Instant::now();
                for e in events {
                    black_box(engine.apply_event(e, now));
                }
                total += start.elapsed();
                done += n as u64;
                round += 1;
            }
            total
        })
    });
    group.finish();

    let index = CorridorIndex::new(&corridor());
    let points: Vec<LatLon> = (0..1024)
        .map(|k| {
            let off = (k % 7) as f64 * 0.002 - 0.006;
            ll(LAT0 + off, LON0 + (k * 37 % VERTICES) as f64 * STEP_DEG)
        })
        .collect();
    let mut group = c.benchmark_group("corridor");
    group.throughput(Throughput::Elements(1));
    let mut k = 0;
    group.bench_function("contains_5k_vertices", |b| {
        b.iter(|| {
            k = (k + 1) % points.len();
            black_box(index.contains(black_box(points[k])))
        })
    });
    group.bench_function("brute_force_5k_vertices", |b| {
        b.iter(|| {
            k = (k + 1) % points.len();
            black_box(index.distance_brute_force(black_box(points[k])))
        })
    });
    group.finish();

    // Sanity, outside timing: the trips really are in transit and watched.
    let moving = (0..TRIPS)
        .filter(|i| {
            engine
                .trip(&TripId(uuid::Uuid::from_u128(*i as u128 + 1)))
                .is_some_and(|t| t.status.state == TripState::InTransit)
        })
        .count();
    eprintln!("trips in transit after the run: {moving} of {TRIPS}");
}

criterion_group! {
    name = engine_benches;
    config = Criterion::default().sample_size(20).measurement_time(Duration::from_secs(5));
    targets = benches
}
criterion_main!(engine_benches);
