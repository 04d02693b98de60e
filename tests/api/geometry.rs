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
