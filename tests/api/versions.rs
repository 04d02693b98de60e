//! Thresholds and geometry are versioned: an input is judged, live and in every replay,
//! with the corridor and the trip's rules in force when it was received.

use serde_json::{Value, json};

use crate::helpers::TestApp;
use crate::on_both_backends;
use crate::tracking::{DEPARTURE_LON, DESTINATION_LON, LAT, SEAL_1, Seq, post, road_lon, rolling};

on_both_backends!(
    a_redrawn_corridor_does_not_rewrite_a_past_deviation,
    changed_thresholds_raise_nothing_on_past_events,
    a_restart_with_other_installation_rules_does_not_rewrite_the_past,
);

async fn deviations(app: &TestApp, trip: &str) -> Vec<Value> {
    let reply = app
        .get(&format!("/v1/alerts?trip={trip}&kind=route_deviation"))
        .await;
    assert_eq!(reply.status, 200, "{}", reply.text);
    reply.json()["alerts"].as_array().unwrap().clone()
}

/// The trip's corridor along latitude 14°, `width_m` wide.
async fn draw_corridor(app: &TestApp, width_m: u32) {
    let line: Vec<Value> = (0..=100)
        .map(|i| {
            json!([
                DEPARTURE_LON + (DESTINATION_LON - DEPARTURE_LON) * f64::from(i) / 100.0,
                LAT
            ])
        })
        .collect();
    let corridor = json!({"type": "Feature", "properties": {"width_m": width_m},
                          "geometry": {"type": "LineString", "coordinates": line}});
    let reply = app.put("/v1/corridors/CA-PQZ-SAL", &corridor).await;
    assert_eq!(reply.status, 200, "{}", reply.text);
}

/// Fixes 2.5 km off the line at these minutes.
fn off_road(seq: &mut Seq, minutes: std::ops::RangeInclusive<i64>) -> Vec<Value> {
    minutes
        .map(|m| seq.event(SEAL_1, m, "position", road_lon(m), 2500.0))
        .collect()
}

async fn a_redrawn_corridor_does_not_rewrite_a_past_deviation(app: TestApp) {
    let mut seq = Seq(0);
    let trip = rolling(&app, &mut seq).await;
    // 2.5 km off a corridor 2 km wide: a deviation.
    post(&app, off_road(&mut seq, 5..=8)).await;
    let judged = deviations(&app, &trip).await;
    assert_eq!(judged.len(), 1, "{judged:?}");
    assert!(judged[0]["cleared_at"].is_null());
    // Redrawn 8 km wide, those fixes would be inside it. A late fix replays the trip: the
    // fixes received under the 2 km corridor are still judged with it.
    draw_corridor(&app, 8000).await;
    let late = seq.event(SEAL_1, 1, "position", road_lon(1), 0.0);
    post(&app, vec![late]).await;
    assert_eq!(deviations(&app, &trip).await, judged);
    // New fixes, as far off, are judged with the new corridor: inside, they clear it.
    post(&app, off_road(&mut seq, 10..=14)).await;
    let now = deviations(&app, &trip).await;
    assert_eq!(now.len(), 1, "{now:?}");
    assert_eq!(now[0]["alert_id"], judged[0]["alert_id"]);
    assert!(!now[0]["cleared_at"].is_null(), "{now:?}");
}

async fn changed_thresholds_raise_nothing_on_past_events(app: TestApp) {
    let mut seq = Seq(0);
    let trip = rolling(&app, &mut seq).await;
    let rules = format!("/v1/trips/{trip}/rules");
    // Two hours off the corridor before it counts: four minutes off are no deviation.
    let reply = app.put(&rules, &json!({"deviation_min_s": 7200})).await;
    assert_eq!(reply.status, 200, "{}", reply.text);
    post(&app, off_road(&mut seq, 5..=8)).await;
    assert_eq!(deviations(&app, &trip).await, Vec::<Value>::new());
    // A minute is enough from now on; a late fix replays the trip, and the fixes received
    // under the two hours raise nothing after the fact.
    let reply = app.put(&rules, &json!({"deviation_min_s": 60})).await;
    assert_eq!(reply.status, 200, "{}", reply.text);
    let late = seq.event(SEAL_1, 1, "position", road_lon(1), 0.0);
    post(&app, vec![late]).await;
    assert_eq!(deviations(&app, &trip).await, Vec::<Value>::new());
    // A new fix off the corridor is judged with the minute.
    post(&app, off_road(&mut seq, 10..=10)).await;
    let raised = deviations(&app, &trip).await;
    assert_eq!(raised.len(), 1, "{raised:?}");
    assert_eq!(
        raised[0]["raised_at"],
        crate::tracking::t(10).to_rfc3339().replace("+00:00", "Z")
    );
}

/// The installation's `[rules]` are versioned too: a gateway restarted with other
/// thresholds judges new inputs with them, and a replay judges the earlier ones with the
/// thresholds they were received under.
async fn a_restart_with_other_installation_rules_does_not_rewrite_the_past(app: TestApp) {
    let mut seq = Seq(0);
    let trip = rolling(&app, &mut seq).await;
    // Four minutes off the corridor under the default thresholds: a deviation.
    post(&app, off_road(&mut seq, 5..=8)).await;
    let judged = deviations(&app, &trip).await;
    assert_eq!(judged.len(), 1, "{judged:?}");
    // Restarted with two hours before an excursion counts.
    let mut settings = crate::helpers::test_settings(crate::helpers::mappings_dir());
    settings.rules.deviation_min_s = 7200;
    let restarted = app.another(settings).await;
    // A late fix replays the trip: the fixes received before the restart keep their
    // judgement.
    let late = seq.event(SEAL_1, 1, "position", road_lon(1), 0.0);
    post(&restarted, vec![late]).await;
    assert_eq!(deviations(&restarted, &trip).await, judged);
    // A second restart with the same thresholds records no new version.
    let before: i64 = restarted
        .count_where("geometry_history", "kind = 'rules'")
        .await;
    assert_eq!(before, 2, "the defaults, then the two hours");
    let mut same = crate::helpers::test_settings(crate::helpers::mappings_dir());
    same.rules.deviation_min_s = 7200;
    let again = restarted.another(same).await;
    assert_eq!(
        again
            .count_where("geometry_history", "kind = 'rules'")
            .await,
        before
    );
}

/// On PostgreSQL a write transaction pins the geometry version: a zone written meanwhile
/// waits for it to end, so an input stored in it records the version it was judged with.
#[tokio::test]
async fn a_geometry_change_waits_for_the_writes_that_judge_with_the_version_before() {
    let Some(app) = crate::helpers::spawn_app(crate::helpers::Backend::Postgres).await else {
        return;
    };
    let version = |app: &TestApp| {
        let store = app.store.clone();
        async move {
            use sqlx::Row;
            sqlx::query("select version from geometry_version where id = 1")
                .fetch_one(store.pool())
                .await
                .unwrap()
                .get::<i64, _>("version")
        }
    };
    let before = version(&app).await;
    let tx = app.store.begin_write().await.expect("a write transaction");
    let store = app.store.clone();
    let zone = json!({"type": "Feature", "properties": {"kind": "rest_area", "radius_m": 300},
                      "geometry": {"type": "Point", "coordinates": [-90.6, 14.0]}});
    let parsed = ects_core::geo::Zone::from_geojson(
        ects_core::ZoneId::parse("REST-PIN".to_owned()).unwrap(),
        &zone,
    )
    .unwrap();
    let writer = tokio::spawn(async move {
        store
            .put_zone(&parsed, &zone, chrono::Utc::now(), "test")
            .await
    });
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    assert!(
        !writer.is_finished(),
        "the zone was written under a pinned version"
    );
    assert_eq!(version(&app).await, before);
    tx.commit().await.expect("committed");
    writer.await.expect("joined").expect("the zone is written");
    assert_eq!(version(&app).await, before + 1);
}
