use serde_json::{Value, json};

use crate::helpers::TestApp;
use crate::on_both_backends;

on_both_backends!(
    corridors_are_stored_and_returned,
    zones_are_stored_and_returned
);

fn corridor(width: f64) -> Value {
    json!({
        "type": "Feature",
        "properties": {"width_m": width, "name": "Puerto Quetzal - San Salvador"},
        "geometry": {"type": "LineString", "coordinates": [
            [-90.7868, 13.9312], [-90.6, 14.0], [-90.1, 13.86], [-89.19, 13.69]
        ]}
    })
}

async fn corridors_are_stored_and_returned(app: TestApp) {
    let created = app.put("/v1/corridors/CA-PQZ-SAL", &corridor(2000.0)).await;
    assert_eq!(created.status, 201, "{}", created.text);
    assert_eq!(created.json(), corridor(2000.0));
    let replaced = app.put("/v1/corridors/CA-PQZ-SAL", &corridor(3000.0)).await;
    assert_eq!(replaced.status, 200);
    let got = app.get("/v1/corridors/CA-PQZ-SAL").await;
    assert_eq!(got.status, 200);
    assert_eq!(got.json(), corridor(3000.0));
    let list = app.get("/v1/corridors").await.json();
    assert_eq!(list["corridors"].as_array().unwrap().len(), 1);
    assert_eq!(app.get("/v1/corridors/NOPE").await.status, 404);

    let mut off_earth = corridor(2000.0);
    off_earth["geometry"]["coordinates"][2] = json!([-90.1, 95.0]);
    let reply = app.put("/v1/corridors/BAD", &off_earth).await;
    assert_eq!(reply.status, 422, "{}", reply.text);
    assert_eq!(reply.pointers(), vec!["/geometry/coordinates/2"]);
    let mut no_width = corridor(2000.0);
    no_width["properties"] = json!({});
    assert_eq!(
        app.put("/v1/corridors/BAD", &no_width).await.pointers(),
        vec!["/properties/width_m"]
    );
    assert_eq!(
        app.put("/v1/corridors/bad%20id", &corridor(1.0))
            .await
            .status,
        400
    );
    // Nothing refused was stored, and the good corridor is unchanged.
    assert_eq!(app.get("/v1/corridors/BAD").await.status, 404);
    assert_eq!(
        app.get("/v1/corridors/CA-PQZ-SAL").await.json(),
        corridor(3000.0)
    );
}

async fn zones_are_stored_and_returned(app: TestApp) {
    let office = json!({
        "type": "Feature",
        "properties": {"kind": "customs_office", "office_code": "GTPQZ"},
        "geometry": {"type": "Polygon", "coordinates": [[
            [-90.80, 13.92], [-90.77, 13.92], [-90.77, 13.94], [-90.80, 13.94], [-90.80, 13.92]
        ]]}
    });
    let rest = json!({
        "type": "Feature",
        "properties": {"kind": "rest_area", "radius_m": 300},
        "geometry": {"type": "Point", "coordinates": [-90.6, 14.0]}
    });
    assert_eq!(app.put("/v1/zones/GTPQZ", &office).await.status, 201);
    assert_eq!(app.put("/v1/zones/rest-km42", &rest).await.status, 201);
    assert_eq!(app.get("/v1/zones/GTPQZ").await.json(), office);
    assert_eq!(
        app.get("/v1/zones").await.json()["zones"]
            .as_array()
            .unwrap()
            .len(),
        2
    );

    let mut open_ring = office.clone();
    open_ring["geometry"]["coordinates"][0][4] = json!([-90.81, 13.92]);
    let reply = app.put("/v1/zones/OPEN", &open_ring).await;
    assert_eq!(reply.status, 422);
    assert_eq!(reply.pointers(), vec!["/geometry/coordinates/0"]);
    let mut bad_kind = rest.clone();
    bad_kind["properties"]["kind"] = "car_park".into();
    assert_eq!(
        app.put("/v1/zones/X", &bad_kind).await.pointers(),
        vec!["/properties/kind"]
    );
    let not_geojson = app.put("/v1/zones/X", &json!([1, 2])).await;
    assert_eq!(not_geojson.status, 422);
    assert_eq!(app.get("/v1/zones/X").await.status, 404);
}

async fn review_geometry_app(backend: crate::helpers::Backend) -> Option<TestApp> {
    // The default body limit (10 MiB), which let the review's 7.4 MB corridor in.
    crate::helpers::spawn_app_with(backend, crate::helpers::mappings_dir(), |s| {
        s.max_body_bytes = ects_gateway::config::Settings::default().max_body_bytes
    })
    .await
}

mod geometry_over_its_limits_is_refused {
    #[tokio::test]
    async fn sqlite() {
        if let Some(app) = super::review_geometry_app(crate::helpers::Backend::Sqlite).await {
            super::geometry_over_its_limits_is_refused(app).await;
        }
    }

    #[tokio::test]
    async fn postgres() {
        if let Some(app) = super::review_geometry_app(crate::helpers::Backend::Postgres).await {
            super::geometry_over_its_limits_is_refused(app).await;
        }
    }
}

/// The review's requests (M2): a 420,000-vertex corridor and a world-sized border post.
async fn geometry_over_its_limits_is_refused(app: TestApp) {
    let line: Vec<Value> = (0..420_000)
        .map(|i| json!([-90.0 + f64::from(i) * 1e-6, 14.1]))
        .collect();
    let huge = json!({"type": "Feature", "properties": {"width_m": 2000},
                      "geometry": {"type": "LineString", "coordinates": line}});
    let reply = app.put("/v1/corridors/HUGE", &huge).await;
    assert_eq!(
        reply.status,
        422,
        "{}",
        &reply.text[..reply.text.len().min(300)]
    );
    assert_eq!(reply.pointers(), vec!["/geometry/coordinates"]);

    let world = json!({"type": "Feature", "properties": {"kind": "border_post"},
        "geometry": {"type": "Polygon", "coordinates": [[[-179, -89], [179, -89], [179, 89], [-179, 89], [-179, -89]]]}});
    let reply = app.put("/v1/zones/EVERYWHERE", &world).await;
    assert_eq!(reply.status, 422, "{}", reply.text);
    assert_eq!(reply.pointers(), vec!["/geometry/coordinates/0"]);
    // A bow-tie: tiny, under every size limit, but its ring crosses itself.
    let bow_tie = json!({"type": "Feature", "properties": {"kind": "border_post"},
        "geometry": {"type": "Polygon", "coordinates": [[[-90.0, 14.0], [-89.99, 14.01], [-89.99, 14.0], [-90.0, 14.01], [-90.0, 14.0]]]}});
    let reply = app.put("/v1/zones/BOWTIE", &bow_tie).await;
    assert_eq!(reply.status, 422, "{}", reply.text);
    assert_eq!(reply.pointers(), vec!["/geometry/coordinates/0"]);
    assert!(reply.text.contains("crosses"), "{}", reply.text);
    // A sliver along 30 km of road: under 80 km², over a border post's 20 km extent.
    let sliver = json!({"type": "Feature", "properties": {"kind": "border_post"},
        "geometry": {"type": "Polygon", "coordinates": [[[-90.0, 14.0], [-89.7, 14.0], [-89.7, 14.002], [-90.0, 14.002], [-90.0, 14.0]]]}});
    let reply = app.put("/v1/zones/SLIVER", &sliver).await;
    assert_eq!(reply.status, 422, "{}", reply.text);
    assert_eq!(reply.pointers(), vec!["/geometry/coordinates/0"]);
    let wide_release = json!({"type": "Feature", "properties": {"kind": "release_place", "radius_m": 50000},
        "geometry": {"type": "Point", "coordinates": [-90.5, 14.6]}});
    let reply = app.put("/v1/zones/WIDE", &wide_release).await;
    assert_eq!(reply.pointers(), vec!["/properties/radius_m"]);
    assert_eq!(app.get("/v1/zones").await.json()["zones"], json!([]));
    assert_eq!(app.get("/v1/corridors/HUGE").await.status, 404);
}

on_both_backends!(a_stored_zone_over_todays_limits_is_left_out_not_fatal);

/// A database from before the limits may hold a world-sized zone: it is left out of
/// tracking (and logged), and trips go on.
async fn a_stored_zone_over_todays_limits_is_left_out_not_fatal(app: TestApp) {
    use ects_core::geo::{Zone, ZoneKind, ZoneShape};
    use ects_core::{LatLon, ZoneId};
    let ring: Vec<LatLon> = [
        (-89.0, -179.0),
        (-89.0, 179.0),
        (89.0, 179.0),
        (89.0, -179.0),
        (-89.0, -179.0),
    ]
    .iter()
    .map(|&(lat, lon)| LatLon::new(lat, lon).unwrap())
    .collect();
    let world = Zone {
        id: ZoneId::parse("EVERYWHERE").unwrap(),
        kind: ZoneKind::BorderPost,
        office_code: None,
        shape: ZoneShape::Polygon(vec![ring]),
    };
    let feature = json!({"type": "Feature", "properties": {"kind": "border_post"},
        "geometry": {"type": "Polygon", "coordinates": [[[-179, -89], [179, -89], [179, 89], [-179, 89], [-179, -89]]]}});
    app.store
        .put_zone(&world, &feature, chrono::Utc::now(), "test")
        .await
        .unwrap();
    let trip = app.declare_gt_sv().await;
    // Events make the trip look at the geometry.
    let reply = app
        .post_events(crate::helpers::fixture("ects-json/events-gt-sv.json"))
        .await;
    assert_eq!(reply.status, 202, "{}", reply.text);
    assert_eq!(app.trip(&trip).await["state"], "in_transit");
}
