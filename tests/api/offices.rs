//! The office registry: one list for every format, its policies, its HTTP routes and its
//! CLI import.

use std::path::{Path, PathBuf};

use ects_gateway::config::Settings;
use ects_gateway::formats::{Formats, Outbound};
use ects_gateway::offices::OfficePolicy;
use serde_json::{Value, json};

use crate::helpers::{Backend, TestApp, fixture, product_mappings_dir, spawn_app_with};

fn root(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(path)
}

fn shipped_formats(policy: OfficePolicy) -> Formats {
    let mut settings = Settings {
        mappings_dir: product_mappings_dir(),
        ..Settings::default()
    };
    settings.offices.policy = policy;
    ects_gateway::startup::formats(&settings).expect("the shipped mappings compile")
}

fn run_cases(formats: &Formats, dir: &str, at_least: usize) {
    let results = ects_gateway::mapping::harness::run(formats, &root(dir));
    assert!(results.len() >= at_least, "{dir}: {} cases", results.len());
    let failed: Vec<String> = results
        .iter()
        .filter(|r| !r.failures.is_empty())
        .map(|r| format!("{}/{}: {}", r.format, r.case, r.failures.join("; ")))
        .collect();
    assert!(failed.is_empty(), "{dir}: {failed:#?}");
}

/// A strict registry where customs registered the project's codes themselves (the shipped
/// rows, with their own `source`), as an installation that uses them must.
fn strict_with_project_codes_registered() -> Formats {
    let entries = ects_gateway::offices::shipped()
        .unwrap()
        .into_iter()
        .map(|mut o| {
            if o.is_project_code() {
                o.source = Some("registered by the operator".into());
            }
            o
        })
        .collect();
    let settings = Settings {
        mappings_dir: product_mappings_dir(),
        ..Settings::default()
    };
    let offices = ects_gateway::offices::Offices::new(OfficePolicy::Strict, entries);
    ects_gateway::startup::formats_with_registry(&settings, &offices).unwrap()
}

#[test]
fn every_shipped_fixture_names_only_registered_offices() {
    // Under `strict`, every office of every shipped format's cases is in the shipped
    // registry (the README's and fixtures' project codes once customs registered them):
    // the real ASYCUDA exports' and HMRC's too.
    run_cases(&strict_with_project_codes_registered(), "tests/formats", 60);
}

fn decode_readme_with(
    formats: &Formats,
    edit: impl FnOnce(&mut Value),
) -> Result<Vec<String>, Vec<(String, String)>> {
    let mut d: Value =
        serde_json::from_slice(&fixture("ects-json/declaration-gt-sv.json")).unwrap();
    edit(&mut d);
    match formats
        .get("ects-json")
        .unwrap()
        .decode(d.to_string().as_bytes())
    {
        Ok(decoded) => Ok(decoded.notes.iter().map(|n| n.detail.clone()).collect()),
        Err(ects_gateway::problem::DocumentError::Invalid(p)) => Err(p
            .into_iter()
            .map(|p| (p.pointer.unwrap_or_default(), p.detail))
            .collect()),
        Err(e) => panic!("{e}"),
    }
}

#[test]
fn strict_means_strict() {
    let strict = shipped_formats(OfficePolicy::Strict);
    let lenient = shipped_formats(OfficePolicy::KnownOrLocode);
    // The project's codes (GTPQZ, GTPDA) are not registered offices under strict.
    let refused = decode_readme_with(&strict, |_| {}).unwrap_err();
    let pointers: Vec<&str> = refused.iter().map(|(p, _)| p.as_str()).collect();
    assert_eq!(
        pointers,
        vec!["/office_of_departure/code", "/offices_of_transit/0/code"],
        "{refused:?}"
    );
    assert!(refused[0].1.contains("code of this project"), "{refused:?}");
    assert!(decode_readme_with(&lenient, |_| {}).is_ok());
    // Registered ones (UN/LOCODE GTPRQ): accepted.
    let real = |d: &mut Value| {
        d["office_of_departure"] = json!({"code": "GTPRQ", "country": "GT"});
        d["offices_of_transit"] = json!([]);
    };
    assert_eq!(decode_readme_with(&strict, real), Ok(vec![]));
    // A code whose country is not the role's: refused under strict, at the country.
    let elsewhere = |d: &mut Value| {
        real(d);
        d["office_of_destination"]["country"] = json!("GT");
    };
    let refused = decode_readme_with(&strict, elsewhere).unwrap_err();
    assert_eq!(refused.len(), 1, "{refused:?}");
    assert_eq!(refused[0].0, "/office_of_destination/country");
    assert!(refused[0].1.contains("SV"), "{refused:?}");
    let notes = decode_readme_with(&lenient, elsewhere).unwrap();
    assert!(notes.iter().any(|n| n.contains("SVSAL")), "{notes:?}");
}

#[test]
fn validity_is_checked_on_the_declaration_s_own_date_per_policy() {
    use ects_gateway::offices::{Findings, Office, Offices};
    let entry = Office::from_json(
        &json!({"code": "GTOLD", "name": "Closed office", "country": "GT",
                "valid_from": "2020-01-01", "valid_until": "2026-03-01"}),
        "",
    )
    .unwrap();
    let code = entry.code.clone();
    let country = entry.country.clone();
    for (policy, refused) in [
        (OfficePolicy::Strict, true),
        (OfficePolicy::KnownOrLocode, false),
    ] {
        let offices = Offices::new(policy, vec![entry.clone()]);
        let on = |date: &str| {
            let mut found = Findings::default();
            offices.check_code(
                &code,
                Some(&country),
                None,
                date.parse().unwrap(),
                "/x/code",
                &mut found,
            );
            found
        };
        let closed = on("2026-03-14");
        assert_eq!(
            closed.problems.len(),
            usize::from(refused),
            "{policy:?}: {closed:?}"
        );
        assert_eq!(
            closed.notes.len(),
            usize::from(!refused),
            "{policy:?}: {closed:?}"
        );
        let open = on("2026-02-01");
        assert!(
            open.problems.is_empty() && open.notes.is_empty(),
            "{open:?}"
        );
    }
    // A declaration dated while the office was open is accepted under strict, though read
    // after it closed: its own date counts.
    let mut d: Value =
        serde_json::from_slice(&fixture("ects-json/declaration-gt-sv.json")).unwrap();
    d["office_of_departure"] = json!({"code": "GTOLD", "country": "GT"});
    d["offices_of_transit"] = json!([]);
    d["declared_at"] = json!("2026-02-01T08:00:00Z");
    let mut entries = ects_gateway::offices::shipped_for(OfficePolicy::Strict).unwrap();
    entries.push(entry);
    let settings = Settings {
        mappings_dir: product_mappings_dir(),
        ..Settings::default()
    };
    let strict = ects_gateway::startup::formats_with_registry(
        &settings,
        &Offices::new(OfficePolicy::Strict, entries),
    )
    .unwrap();
    let json = strict.get("ects-json").unwrap();
    assert!(json.decode(d.to_string().as_bytes()).is_ok());
    d["declared_at"] = json!("2026-03-14T08:00:00Z");
    assert!(json.decode(d.to_string().as_bytes()).is_err());
}

#[test]
fn each_policy_decides_an_unknown_office_and_both_refuse_a_malformed_one() {
    // Per format (duca-t, wco-dm, asycuda, icegate-csn): an unknown UN/LOCODE-shaped
    // office is refused under strict with its document path and line, accepted under
    // known_or_locode; a malformed code is refused under both.
    run_cases(
        &strict_with_project_codes_registered(),
        "tests/offices/strict",
        8,
    );
    let lenient = shipped_formats(OfficePolicy::KnownOrLocode);
    run_cases(&lenient, "tests/offices/known_or_locode", 8);
    for (format, file, code) in [
        ("duca-t", "input.xml", "HNXXX"),
        ("wco-dm", "input.xml", "UGXXX"),
        ("asycuda", "input.xml", "RWXXX"),
        ("icegate-csn", "input.json", "NPXXX"),
    ] {
        let path = root(&format!(
            "tests/offices/known_or_locode/{format}/unknown-locode-office/{file}"
        ));
        let body = std::fs::read(&path).unwrap();
        let decoded = lenient.get(format).unwrap().decode(&body).unwrap();
        let note = decoded
            .notes
            .iter()
            .find(|n| n.detail.contains(code))
            .unwrap_or_else(|| panic!("{format}: no note about {code}: {:?}", decoded.notes));
        assert!(
            note.detail.contains("accepted as a UN/LOCODE-shaped code"),
            "{note:?}"
        );
        assert!(note.path.is_some(), "{format}: the note names its place");
    }
}

/// Every leaf of `value`, by JSON pointer.
fn leaves(value: &Value, at: String, out: &mut Vec<(String, Value)>) {
    match value {
        Value::Object(m) => m
            .iter()
            .for_each(|(k, v)| leaves(v, format!("{at}/{k}"), out)),
        Value::Array(a) => a
            .iter()
            .enumerate()
            .for_each(|(i, v)| leaves(v, format!("{at}/{i}"), out)),
        other => out.push((at, other.clone())),
    }
}

/// Writes `input` (canonical) to `format`, reads it back, and returns the canonical
/// leaves the round trip changed or lost.
fn round_trip(formats: &Formats, format: &str, input: &[u8]) -> Vec<String> {
    let canonical = formats.get("ects-json").unwrap().decode(input).unwrap();
    let adapter = formats.get(format).unwrap();
    let Outbound::Declaration(d) = canonical.inbound.as_outbound() else {
        panic!("a declaration");
    };
    let written = adapter
        .encode_unsigned(&Outbound::Declaration(d))
        .unwrap_or_else(|e| panic!("{format}: writing failed: {e}"));
    let back = adapter
        .decode(&written.body)
        .unwrap_or_else(|e| panic!("{format}: its own output is refused: {e}"));
    // What the format cannot carry is said when it is written, never lost silently.
    let flagged: Vec<&str> = written
        .flags
        .iter()
        .filter(|f| f.detail.starts_with("not_carried"))
        .filter_map(|f| f.pointer.as_deref())
        .collect();
    for pattern_lost in not_carried(format) {
        let said = flagged.iter().any(|p| pattern(p) == *pattern_lost)
            || pattern_lost.ends_with("/name")
            || *pattern_lost == "/declared_at"
            || *pattern_lost == "/time_limit"
            || pattern_lost.starts_with("/goods/")
            || pattern_lost.starts_with("/vehicle/")
            || pattern_lost.starts_with("/carrier/");
        assert!(
            said,
            "{format}: {pattern_lost} lost without a not_carried note: {flagged:?}"
        );
    }
    let (before, after) = (Value::from(&canonical.inbound), Value::from(&back.inbound));
    let mut original = Vec::new();
    leaves(&before, String::new(), &mut original);
    let mut lost = Vec::new();
    for (pointer, value) in original {
        match after.pointer(&pointer) {
            Some(v) if *v == value => {}
            Some(v) if v.as_f64().is_some() && v.as_f64() == value.as_f64() => {}
            other => lost.push(format!("{pointer}: {value} → {other:?}")),
        }
    }
    lost
}

/// What each format does not carry back today, by canonical pointer (indices as `*`):
/// fields its mapping has no place for (names, driver, itinerary, ...) and the known lossy
/// ones (date-only fields). Seal kinds and device ids are carried by every declaration
/// format. Any other loss fails: a mapped field must survive the round trip.
fn not_carried(format: &str) -> &'static [&'static str] {
    match format {
        "asycuda" => &[
            "/corridor_id",
            "/driver/licence",
            "/driver/name",
            "/declared_at",
            "/time_limit",
            "/goods/*/packages",
            "/itinerary/*",
            "/office_of_destination/name",
        ],
        "wco-dm" => &[
            "/corridor_id",
            "/driver/licence",
            "/driver/name",
            "/office_of_departure/name",
            "/office_of_destination/name",
            "/offices_of_transit/*/name",
            "/time_limit",
        ],
        "icegate-csn" => &[
            "/carrier/name",
            "/declared_at",
            "/driver/licence",
            "/driver/name",
            "/goods/*/gross_mass_kg",
            "/itinerary/*",
            "/office_of_departure/name",
            "/office_of_destination/name",
            "/time_limit",
            "/vehicle/country",
            "/vehicle/plate",
        ],
        "icegate-flat" => &[
            "/carrier/id",
            "/carrier/name",
            "/declared_at",
            "/driver/licence",
            "/driver/name",
            "/goods/*/description",
            "/goods/*/hs_code",
            "/itinerary/*",
            "/office_of_departure/name",
            "/office_of_destination/name",
            "/time_limit",
            "/vehicle/country",
        ],
        _ => &[],
    }
}

fn pattern(pointer: &str) -> String {
    pointer
        .split('/')
        .map(|p| if p.parse::<usize>().is_ok() { "*" } else { p })
        .collect::<Vec<_>>()
        .join("/")
}

#[test]
fn the_readme_declaration_goes_to_every_declaration_format_and_back() {
    let formats = shipped_formats(OfficePolicy::KnownOrLocode);
    let readme = fixture("ects-json/declaration-gt-sv.json");
    let indian = std::fs::read(root(
        "tests/formats/ects-json/in-nsa-tkd-two-containers/input.json",
    ))
    .unwrap();
    let mut tried = Vec::new();
    let mut losses = Vec::new();
    for info in formats.list() {
        let writes = info.messages.iter().any(|m| m == "declaration:out");
        let reads = info.messages.iter().any(|m| m == "declaration:in");
        if info.id == "ects-json" || !(writes && reads) {
            continue;
        }
        // ICEGATE carries Indian ports of reporting only: an Indian trip for its formats.
        let input = if info.id.starts_with("icegate") {
            &indian
        } else {
            &readme
        };
        let lost: Vec<String> = round_trip(&formats, &info.id, input)
            .into_iter()
            .filter(|l| {
                let pointer = l.split(':').next().unwrap_or_default();
                !not_carried(&info.id).contains(&pattern(pointer).as_str())
            })
            .collect();
        if !lost.is_empty() {
            losses.push(format!("{}: {lost:#?}", info.id));
        }
        tried.push(info.id.clone());
    }
    assert!(losses.is_empty(), "{losses:#?}");
    // Explicitly: both seals of each container keep their kind and device id.
    for f in ["wco-dm", "asycuda", "duca-t"] {
        let canonical = formats.get("ects-json").unwrap().decode(&readme).unwrap();
        let Outbound::Declaration(d) = canonical.inbound.as_outbound() else {
            panic!("a declaration");
        };
        let adapter = formats.get(f).unwrap();
        let written = adapter.encode_unsigned(&Outbound::Declaration(d)).unwrap();
        let back = Value::from(&adapter.decode(&written.body).unwrap().inbound);
        let seals: Vec<(String, String, Option<String>)> = back["equipment"]
            .as_array()
            .unwrap()
            .iter()
            .flat_map(|e| e["seals"].as_array().unwrap().clone())
            .map(|s| {
                (
                    s["id"].as_str().unwrap().to_owned(),
                    s["kind"].as_str().unwrap().to_owned(),
                    s["device_id"].as_str().map(str::to_owned),
                )
            })
            .collect();
        let seal = |id: &str, kind: &str, device: Option<&str>| {
            (id.to_owned(), kind.to_owned(), device.map(str::to_owned))
        };
        assert_eq!(
            seals,
            vec![
                seal("ES00781234", "electronic", Some("860000000000001")),
                seal("GTB4471205", "mechanical", None),
                seal("ES00781235", "electronic", Some("860000000000017")),
                seal("GTB4471206", "mechanical", None),
            ],
            "{f}"
        );
    }
    for f in ["duca-t", "wco-dm", "asycuda", "icegate-csn"] {
        assert!(tried.iter().any(|t| t == f), "{f} not tried: {tried:?}");
    }
}

async fn strict_app(backend: Backend) -> Option<TestApp> {
    spawn_app_with(backend, product_mappings_dir(), |s| {
        s.offices.policy = OfficePolicy::Strict
    })
    .await
}

async fn lenient_app(backend: Backend) -> Option<TestApp> {
    spawn_app_with(backend, product_mappings_dir(), |_| {}).await
}

macro_rules! on_both {
    ($spawn:ident: $($name:ident),* $(,)?) => {
        $(
            mod $name {
                #[tokio::test]
                async fn sqlite() {
                    if let Some(app) = super::$spawn(crate::helpers::Backend::Sqlite).await {
                        super::$name(app).await;
                    }
                }

                #[tokio::test]
                async fn postgres() {
                    if let Some(app) = super::$spawn(crate::helpers::Backend::Postgres).await {
                        super::$name(app).await;
                    }
                }
            }
        )*
    };
}

on_both!(lenient_app:
    the_readme_walk_through_translates_to_duca_t_wco_and_asycuda,
    offices_are_listed_read_registered_and_imported,
    the_registry_version_moves_on_every_change,
    every_office_and_geometry_change_is_recorded_with_who_and_when,
    imports_and_zones_are_capped
);
on_both!(strict_app: a_strict_gateway_refuses_an_unknown_office_until_it_is_registered);

async fn the_readme_walk_through_translates_to_duca_t_wco_and_asycuda(app: TestApp) {
    for to in ["duca-t", "wco-dm", "asycuda"] {
        let reply = app
            .post(
                &format!("/v1/translate?from=ects-json&to={to}"),
                fixture("ects-json/declaration-gt-sv.json"),
            )
            .await;
        assert_eq!(reply.status, 200, "{to}: {}", reply.text);
    }
}

fn office(code: &str) -> Value {
    json!({"code": code, "name": "Test office", "country": "GT", "roles": ["departure", "border_post"]})
}

async fn offices_are_listed_read_registered_and_imported(app: TestApp) {
    // Seeded from the shipped data at start.
    let seeded = app.count("offices").await;
    assert!(seeded > 100, "{seeded}");
    let got = app.get("/v1/offices/GTPQZ").await;
    assert_eq!(got.status, 200, "{}", got.text);
    assert_eq!(got.json()["country"], "GT");
    assert_eq!(app.get("/v1/offices/GTZZZ").await.status, 404);
    assert_eq!(app.get("/v1/offices/gt%20x").await.status, 400);

    // Pages: limit, and the cursor `next` gives.
    let first = app.get("/v1/offices?country=GT&limit=2").await.json();
    let codes = |page: &Value| -> Vec<String> {
        page["offices"]
            .as_array()
            .unwrap()
            .iter()
            .map(|o| o["code"].as_str().unwrap().to_owned())
            .collect()
    };
    assert_eq!(codes(&first).len(), 2);
    let next = first["next"].as_str().unwrap().to_owned();
    let second = app
        .get(&format!("/v1/offices?country=GT&limit=2&after={next}"))
        .await
        .json();
    assert!(codes(&second)[0] > codes(&first)[1]);
    let border = app
        .get("/v1/offices?country=GT&role=border_post&limit=1000")
        .await
        .json();
    assert!(codes(&border).contains(&"GTPDA".to_owned()));
    assert!(!codes(&border).contains(&"GTGUA".to_owned()));
    for bad in [
        "country=GTM",
        "role=nowhere",
        "limit=0",
        "limit=1001",
        "after=a%20b",
    ] {
        assert_eq!(
            app.get(&format!("/v1/offices?{bad}")).await.status,
            400,
            "{bad}"
        );
    }

    // One office, with a location: its zone is registered and linked.
    let mut located = office("GTZZZ");
    located["location"] =
        json!({"type": "Point", "coordinates": [-90.78, 13.93], "radius_m": 1500});
    let created = app.put("/v1/offices/GTZZZ", &located).await;
    assert_eq!(created.status, 201, "{}", created.text);
    assert_eq!(app.put("/v1/offices/GTZZZ", &located).await.status, 200);
    let read = app.get("/v1/offices/GTZZZ").await.json();
    assert_eq!(read["zones"], json!(["office:GTZZZ"]));
    let zone = app.get("/v1/zones/office:GTZZZ").await;
    assert_eq!(zone.status, 200, "{}", zone.text);
    assert_eq!(zone.json()["properties"]["kind"], "border_post");

    // Every field is checked, each problem with its pointer; nothing refused is stored.
    let bad = json!({"name": "", "country": "GTM", "roles": ["nowhere"],
                     "valid_from": "2026-01-01", "valid_until": "2025-01-01",
                     "location": {"type": "Point", "coordinates": [-90.0, 14.0], "radius_m": 1.0e9}});
    let reply = app.put("/v1/offices/GTYYY", &bad).await;
    assert_eq!(reply.status, 422, "{}", reply.text);
    let mut pointers = reply.pointers();
    pointers.sort();
    assert_eq!(
        pointers,
        vec![
            "/country",
            "/location/radius_m",
            "/name",
            "/roles/0",
            "/valid_until"
        ]
    );
    let mismatch = app.put("/v1/offices/GTYYY", &office("GTXXX")).await;
    assert_eq!(mismatch.pointers(), vec!["/code"]);
    assert_eq!(app.get("/v1/offices/GTYYY").await.status, 404);

    // Import: JSON, all or none.
    let list =
        json!({"offices": [office("GTAAA"), {"code": "GTBBB", "name": "x", "country": "XX"}]});
    let refused = app.post("/v1/offices/import", list.to_string()).await;
    assert_eq!(refused.status, 422, "{}", refused.text);
    assert_eq!(refused.pointers(), vec!["/offices/1/country"]);
    assert_eq!(app.get("/v1/offices/GTAAA").await.status, 404);
    let list = json!([office("GTAAA"), office("GTZZZ")]);
    let imported = app.post("/v1/offices/import", list.to_string()).await;
    assert_eq!(imported.status, 200, "{}", imported.text);
    assert_eq!(imported.json()["created"], 1);
    assert_eq!(imported.json()["replaced"], 1);

    // Import: CSV, problems by line.
    let csv = "code,name,country,roles\nGTCCC,Aduana C,GT,transit\nGTDDD,\"Aduana D, norte\",GT,destination\n";
    let send_csv = |body: &'static str| {
        app.client
            .post(format!("{}/v1/offices/import", app.address))
            .header("content-type", "text/csv")
            .body(body)
            .send()
    };
    let reply = send_csv(csv).await.unwrap();
    assert_eq!(reply.status(), 200);
    assert_eq!(
        app.get("/v1/offices/GTDDD").await.json()["name"],
        "Aduana D, norte"
    );
    let reply = send_csv("code,name,country,roles\nGTEEE,E,GT,transit\nGTFFF,F,GT,nowhere\n")
        .await
        .unwrap();
    assert_eq!(reply.status(), 422);
    let problem: Value = reply.json().await.unwrap();
    assert_eq!(problem["errors"][0]["line"], 3, "{problem}");
    assert_eq!(app.get("/v1/offices/GTEEE").await.status, 404);
}

async fn the_registry_version_moves_on_every_change(app: TestApp) {
    let entry = |name: &str| {
        ects_gateway::offices::Office::from_json(
            &json!({"code": "GTVVV", "name": name, "country": "GT"}),
            "",
        )
        .unwrap()
    };
    let now = chrono::Utc::now();
    let before = app.store.offices_version().await.unwrap();
    app.store
        .put_office(&entry("A"), now, "test")
        .await
        .unwrap();
    let first = app.store.offices_version().await.unwrap();
    assert_ne!(before, first);
    // Another instance, its clock five minutes behind, replaces the entry: the count and
    // the latest `updated_at` stay as they were, the registry does not.
    let behind = now - chrono::Duration::minutes(5);
    app.store
        .put_office(&entry("B"), behind, "test")
        .await
        .unwrap();
    let second = app.store.offices_version().await.unwrap();
    assert_ne!(first, second, "a replaced entry must change the version");
    app.store
        .import_offices(&[entry("C")], behind, "test")
        .await
        .unwrap();
    assert_ne!(second, app.store.offices_version().await.unwrap());
    // Seeding what is stored already changes nothing, and says so.
    let same = app.store.offices_version().await.unwrap();
    app.store.merge_offices(&[entry("D")], now).await.unwrap();
    assert_eq!(same, app.store.offices_version().await.unwrap());
}

async fn every_office_and_geometry_change_is_recorded_with_who_and_when(app: TestApp) {
    // The shipped data, seeded at start.
    let seeded = app
        .get("/v1/registry/changes?subject=office&id=SVSAL")
        .await;
    assert_eq!(seeded.status, 200, "{}", seeded.text);
    let seeded = seeded.json();
    assert_eq!(seeded["changes"][0]["actor"], "shipped", "{seeded}");
    assert_eq!(seeded["changes"][0]["action"], "created");

    let mut located = office("GTZZZ");
    located["location"] = json!({"type": "Point", "coordinates": [-90.78, 13.93], "radius_m": 900});
    let before = chrono::Utc::now();
    assert_eq!(app.put("/v1/offices/GTZZZ", &located).await.status, 201);
    assert_eq!(app.put("/v1/offices/GTZZZ", &located).await.status, 200);
    let rest = json!({"type": "Feature", "properties": {"kind": "rest_area", "radius_m": 300},
                      "geometry": {"type": "Point", "coordinates": [-90.6, 14.0]}});
    assert_eq!(app.put("/v1/zones/rest-km42", &rest).await.status, 201);
    let corridor = json!({"type": "Feature", "properties": {"width_m": 2000},
        "geometry": {"type": "LineString", "coordinates": [[-90.78, 13.93], [-89.19, 13.69]]}});
    assert_eq!(app.put("/v1/corridors/CA-1", &corridor).await.status, 201);
    let imported = app
        .post("/v1/offices/import", json!([office("GTAAA")]).to_string())
        .await;
    assert_eq!(imported.status, 200, "{}", imported.text);

    let all = app
        .get("/v1/registry/changes?limit=1000&after=0")
        .await
        .json();
    let mine: Vec<&Value> = all["changes"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|c| c["actor"] != "shipped")
        .collect();
    let seen: Vec<(String, String, String)> = mine
        .iter()
        .map(|c| {
            (
                c["subject"].as_str().unwrap().to_owned(),
                c["id"].as_str().unwrap().to_owned(),
                c["action"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    let expect = |s: &str, id: &str, a: &str| (s.to_owned(), id.to_owned(), a.to_owned());
    assert_eq!(
        seen,
        vec![
            expect("office", "GTZZZ", "created"),
            expect("zone", "office:GTZZZ", "created"),
            expect("office", "GTZZZ", "replaced"),
            expect("zone", "office:GTZZZ", "replaced"),
            expect("zone", "rest-km42", "created"),
            expect("corridor", "CA-1", "created"),
            expect("office", "GTAAA", "created"),
        ]
    );
    for c in &mine {
        let actor = c["actor"].as_str().unwrap_or_default();
        assert!(
            actor.starts_with("user:test-admin-") && actor.ends_with("/admin"),
            "the admin who changed it: {c}"
        );
        let at: chrono::DateTime<chrono::Utc> = c["at"].as_str().unwrap().parse().unwrap();
        assert!(at >= before - chrono::Duration::seconds(1), "{c}");
    }
    assert_eq!(mine[4]["entry"], rest);
    assert_eq!(mine[0]["entry"]["location"]["radius_m"], 900);
    // Pages, and the filters.
    let first = app
        .get("/v1/registry/changes?subject=zone&limit=1")
        .await
        .json();
    let next = first["next"].as_i64().unwrap();
    let second = app
        .get(&format!(
            "/v1/registry/changes?subject=zone&limit=1&after={next}"
        ))
        .await
        .json();
    assert!(second["changes"][0]["seq"].as_i64().unwrap() > next);
    for bad in ["subject=trip", "limit=0", "after=-1", "limit=x"] {
        assert_eq!(
            app.get(&format!("/v1/registry/changes?{bad}")).await.status,
            400,
            "{bad}"
        );
    }
}

async fn imports_and_zones_are_capped(app: TestApp) {
    use ects_gateway::offices::MAX_IMPORT_LOCATED;
    use ects_gateway::store::MAX_ZONES;
    // One located office over the import's limit: refused whole, nothing stored.
    let many: Vec<Value> = (0..=MAX_IMPORT_LOCATED)
        .map(|i| {
            json!({"code": format!("GTL{i:04}"), "name": "x", "country": "GT",
                   "location": {"type": "Point", "coordinates": [-90.5, 14.5], "radius_m": 100}})
        })
        .collect();
    let reply = app
        .post("/v1/offices/import", Value::from(many).to_string())
        .await;
    assert_eq!(
        reply.status,
        422,
        "{}",
        &reply.text[..reply.text.len().min(400)]
    );
    assert!(
        reply
            .text
            .contains(&format!("at most {MAX_IMPORT_LOCATED} per import")),
        "{}",
        reply.text
    );
    assert_eq!(app.get("/v1/offices/GTL0000").await.status, 404);

    // The gateway full of zones: a new one is refused, a replaced one is not.
    let feature = json!({"type": "Feature", "properties": {"kind": "rest_area", "radius_m": 100},
                         "geometry": {"type": "Point", "coordinates": [-90.6, 14.0]}});
    sqlx::query(
        "insert into zones (zone_id, kind, office_code, feature, updated_at)
         with recursive n(i) as (select 1 union all select i + 1 from n where i < $1)
         select 'Z' || i, 'rest_area', null, $2, '2026-01-01T00:00:00Z' from n",
    )
    .bind(MAX_ZONES)
    .bind(feature.to_string())
    .execute(app.store.pool())
    .await
    .unwrap();
    let reply = app.put("/v1/zones/ONE-MORE", &feature).await;
    assert_eq!(reply.status, 422, "{}", reply.text);
    assert!(
        reply.text.contains(&format!("limit of {MAX_ZONES} zones")),
        "{}",
        reply.text
    );
    assert_eq!(app.put("/v1/zones/Z1", &feature).await.status, 200);
    // An office's location is a zone too.
    let mut located = office("GTYYY");
    located["location"] = json!({"type": "Point", "coordinates": [-90.78, 13.93], "radius_m": 900});
    let reply = app.put("/v1/offices/GTYYY", &located).await;
    assert_eq!(reply.status, 422, "{}", reply.text);
    assert_eq!(reply.pointers(), vec!["/location"]);
    assert_eq!(app.get("/v1/offices/GTYYY").await.status, 404);
    assert_eq!(
        app.put("/v1/offices/GTYYY", &office("GTYYY")).await.status,
        201
    );
}

fn declaration_to(code: &str) -> Vec<u8> {
    let mut d: Value =
        serde_json::from_slice(&fixture("ects-json/declaration-gt-sv.json")).unwrap();
    d["office_of_destination"] = json!({"code": code, "country": "SV"});
    d["declaration_id"] = json!(format!("GT-2026-T-{code}"));
    d.to_string().into_bytes()
}

/// The project's codes of the README's declaration, registered by customs (under
/// `strict` the shipped rows are not).
async fn register_readme_codes(app: &TestApp) {
    for (code, name) in [("GTPQZ", "Puerto Quetzal"), ("GTPDA", "Pedro de Alvarado")] {
        let entry = json!({"name": name, "country": "GT",
                           "roles": ["departure", "transit", "destination", "border_post"]});
        let reply = app.put(&format!("/v1/offices/{code}"), &entry).await;
        assert_eq!(reply.status, 201, "{}", reply.text);
    }
}

async fn a_strict_gateway_refuses_an_unknown_office_until_it_is_registered(app: TestApp) {
    // The README's declaration: the project's codes are not seeded under strict.
    let project = app
        .post(
            "/v1/translate?from=ects-json&to=duca-t",
            fixture("ects-json/declaration-gt-sv.json"),
        )
        .await;
    assert_eq!(project.status, 422, "{}", project.text);
    assert!(
        project.text.contains("code of this project"),
        "{}",
        project.text
    );
    assert_eq!(app.get("/v1/offices/GTPQZ").await.status, 404);
    register_readme_codes(&app).await;
    // Now every office registered.
    let known = app
        .post(
            "/v1/translate?from=ects-json&to=duca-t",
            fixture("ects-json/declaration-gt-sv.json"),
        )
        .await;
    assert_eq!(known.status, 200, "{}", known.text);
    let refused = app.post_message(declaration_to("SVZZZ")).await;
    assert_eq!(refused.status, 422, "{}", refused.text);
    assert_eq!(refused.pointers(), vec!["/office_of_destination/code"]);
    assert!(refused.text.contains("policy strict"), "{}", refused.text);
    // A zone cannot be linked to an office the registry does not know either.
    let zone = json!({"type": "Feature", "properties": {"kind": "customs_office", "office_code": "SVZZZ"},
                      "geometry": {"type": "Point", "coordinates": [-89.2, 13.7]}});
    let mut circle = zone.clone();
    circle["properties"]["radius_m"] = json!(500);
    let reply = app.put("/v1/zones/SVZZZ", &circle).await;
    assert_eq!(
        reply.pointers(),
        vec!["/properties/office_code"],
        "{}",
        reply.text
    );

    let mut entry = office("SVZZZ");
    entry["country"] = json!("SV");
    assert_eq!(app.put("/v1/offices/SVZZZ", &entry).await.status, 201);
    let accepted = app.post_message(declaration_to("SVZZZ")).await;
    assert_eq!(accepted.status, 202, "{}", accepted.text);
    assert_eq!(app.put("/v1/zones/SVZZZ", &circle).await.status, 201);
}

#[test]
fn the_cli_imports_a_file_into_the_database() {
    let dir = tempfile::tempdir().unwrap();
    let db = format!("sqlite://{}/ects.db", dir.path().display());
    let good = dir.path().join("offices.csv");
    std::fs::write(
        &good,
        "code,name,country,roles,lon,lat,radius_m\nKEZZZ,Test station,KE,border_post,34.28,0.63,800\n",
    )
    .unwrap();
    let bad = dir.path().join("bad.json");
    std::fs::write(
        &bad,
        r#"[{"code": "KEYYY", "name": "x", "country": "KEN"}]"#,
    )
    .unwrap();
    let run = |file: &Path| {
        std::process::Command::new(env!("CARGO_BIN_EXE_ects-gateway"))
            .args(["--database-url", &db, "offices", "import"])
            .arg(file)
            .env_remove("ECTS_CONFIG")
            .output()
            .unwrap()
    };
    let out = run(&good);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("1 office(s) created"));
    let out = run(&bad);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("/0/country"), "{err}");

    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let store = ects_gateway::store::Store::connect(&db.clone().into(), 1)
            .await
            .unwrap();
        assert!(store.office("KEZZZ").await.unwrap().is_some());
        assert!(store.office("KEYYY").await.unwrap().is_none());
        assert_eq!(
            store.zones_of_office("KEZZZ").await.unwrap(),
            vec!["office:KEZZZ"]
        );
        let changes = store
            .registry_changes(Some("office"), Some("KEZZZ"), 0, 10)
            .await
            .unwrap();
        assert_eq!(changes.len(), 1);
        assert_eq!(changes[0].actor, "cli");
    });
}

#[test]
fn the_cli_under_policy_strict_uses_only_the_shipped_and_imported_registry() {
    let dir = tempfile::tempdir().unwrap();
    let db = format!("sqlite://{}/ects.db", dir.path().display());
    let readme = root("tests/fixtures/ects-json/declaration-gt-sv.json");
    let cli = |args: &[&str]| {
        std::process::Command::new(env!("CARGO_BIN_EXE_ects-gateway"))
            .current_dir(root(""))
            .args(["--database-url", &db])
            .args(args)
            .env_remove("ECTS_CONFIG")
            .env_remove("ECTS_OFFICE_POLICY")
            .output()
            .unwrap()
    };
    let translate = |policy: &str| {
        cli(&[
            "--policy",
            policy,
            "translate",
            "--from",
            "ects-json",
            "--to",
            "wco-dm",
            readme.to_str().unwrap(),
        ])
    };
    // No database yet: the shipped data, without the project's codes.
    let out = translate("strict");
    assert_eq!(
        out.status.code(),
        Some(1),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("GTPQZ") && err.contains("code of this project"),
        "{err}"
    );
    assert_eq!(translate("known_or_locode").status.code(), Some(0));
    // Customs import the two codes: the CLI reads them from the database.
    let csv = dir.path().join("project.csv");
    std::fs::write(
        &csv,
        "code,name,country,roles,source\nGTPQZ,Puerto Quetzal,GT,departure,SAT\nGTPDA,Pedro de Alvarado,GT,transit|border_post,SAT\n",
    )
    .unwrap();
    let out = cli(&["offices", "import", csv.to_str().unwrap()]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = translate("strict");
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

async fn strict_ticking_app(backend: Backend) -> Option<TestApp> {
    spawn_app_with(backend, product_mappings_dir(), |s| {
        s.offices.policy = OfficePolicy::Strict;
        s.tick_interval_s = 1;
    })
    .await
}

on_both!(strict_ticking_app: an_office_written_to_the_database_elsewhere_is_read_at_the_next_tick);

async fn an_office_written_to_the_database_elsewhere_is_read_at_the_next_tick(app: TestApp) {
    register_readme_codes(&app).await;
    assert_eq!(app.post_message(declaration_to("SVQQQ")).await.status, 422);
    // As `ects-gateway offices import` or another instance would: straight to the database.
    let entry = ects_gateway::offices::Office::from_json(
        &json!({"code": "SVQQQ", "name": "Q", "country": "SV", "roles": ["destination"]}),
        "",
    )
    .unwrap();
    app.store
        .import_offices(&[entry], chrono::Utc::now(), "test")
        .await
        .unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let reply = app.post_message(declaration_to("SVQQQ")).await;
        if reply.status == 202 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "waited 30 s for the ticker to read the registry again: {}",
            reply.text
        );
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
}
