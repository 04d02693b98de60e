//! The mapping engine: the fixture harness, broken mapping files, hostile XML, and the
//! mapped formats over HTTP.

use ects_gateway::config::Settings;
use ects_gateway::mapping::MappingSet;
use serde_json::{Value, json};

use crate::helpers::{TestApp, fixture, mappings_dir};
use crate::on_both_backends;

fn formats() -> ects_gateway::formats::Formats {
    let settings = Settings {
        mappings_dir: mappings_dir(),
        ..Settings::default()
    };
    ects_gateway::startup::formats(&settings).expect("the test mappings compile")
}

#[test]
fn every_fixture_case_passes_with_its_round_trip() {
    let dir = std::path::Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures"));
    let results = ects_gateway::mapping::harness::run(&formats(), dir);
    assert!(results.len() >= 11, "{} cases", results.len());
    let failed: Vec<String> = results
        .iter()
        .filter(|r| !r.failures.is_empty())
        .map(|r| format!("{}/{}: {}", r.format, r.case, r.failures.join("; ")))
        .collect();
    assert!(failed.is_empty(), "{failed:#?}");
    // Refusal cases are among them: the harness checks problems, not only successes.
    assert!(
        results
            .iter()
            .filter(|r| r.case.starts_with("bad-"))
            .count()
            >= 6
    );
}

fn load_one(files: &[(&str, &str)]) -> String {
    let dir = tempfile::tempdir().unwrap();
    for (name, text) in files {
        let path = dir.path().join(name);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, text).unwrap();
    }
    MappingSet::load(dir.path())
        .map(|_| "loaded".to_owned())
        .unwrap_or_else(|e| e.to_string())
}

const HEAD: &str = "[format]\nid = \"x\"\nversion = \"1\"\nsyntax = \"xml\"\nmessage = \"declaration\"\n[detect]\nroot = \"D\"\n";

#[test]
fn a_broken_mapping_file_is_named_with_its_line_and_reason() {
    let cases = [
        (
            "x.toml",
            format!("{HEAD}[[map]]\ncanonical = \"declaration_id\"\npath = \n"),
            "x.toml:10",
        ),
        (
            "x.toml",
            format!("{HEAD}[[map]]\ncanonical = \"declaration_id\"\npath = \"q:Number\"\n"),
            "x.toml:8: namespace prefix \"q\"",
        ),
        (
            "x.toml",
            format!("{HEAD}[[map]]\ncanonical = \"equipment[].id\"\npath = \"Number\"\n"),
            "x.toml:8: equipment[].id repeats",
        ),
        (
            "x.toml",
            format!("{HEAD}[[map]]\ncanonical = \"state\"\npath = \"S\"\ncodes = \"nope\"\n"),
            "x.toml:8: code list \"nope\"",
        ),
        (
            "x.toml",
            format!(
                "{HEAD}[[map]]\ncanonical = \"declared_at\"\npath = \"T\"\ntype = \"datetime\"\n"
            ),
            "x.toml:8: a datetime or date needs `pattern`",
        ),
        (
            "x.toml",
            format!("{HEAD}[[map]]\npath = \"T\"\n"),
            "x.toml:8: a [[map]] entry has",
        ),
        (
            "x.toml",
            format!("{HEAD}[[map]]\ncanonical = \"a\"\npath = \"T\"\nbogus = 1\n"),
            "x.toml:",
        ),
    ];
    for (name, text, wanted) in cases {
        let message = load_one(&[(name, &text)]);
        assert!(message.contains(wanted), "{wanted:?} not in {message:?}");
    }
    let codes = load_one(&[("codes/k.toml", "[codes]\na = \"1\"\nb = \"1\"\n")]);
    assert!(
        codes.contains("k.toml") && codes.contains("\"1\""),
        "{codes}"
    );
    let canonical = load_one(&[("y.toml", &HEAD.replace("id = \"x\"", "id = \"ects-json\""))]);
    assert!(canonical.contains("canonical format"), "{canonical}");
}

#[test]
fn the_gateway_refuses_to_start_on_a_broken_mapping() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("bad.toml"), "[format]\nid = 3\n").unwrap();
    let settings = Settings {
        mappings_dir: dir.path().to_owned(),
        ..Settings::default()
    };
    let error = ects_gateway::startup::formats(&settings).expect_err("it does not start");
    let chain = format!("{error:#}");
    assert!(chain.contains("bad.toml:2"), "{chain}");
}

#[test]
fn hostile_xml_is_refused_before_it_costs_anything() {
    let formats = formats();
    let xml = formats.get("transit-xml").unwrap();
    let deep = format!(
        "<TransitDeclaration xmlns=\"urn:example:transit:1\">{}{}</TransitDeclaration>",
        "<a>".repeat(100),
        "</a>".repeat(100)
    );
    let laughs = "<?xml version=\"1.0\"?><!DOCTYPE lolz [<!ENTITY lol \"lol\"><!ENTITY lol2 \"&lol;&lol;&lol;\">]><TransitDeclaration xmlns=\"urn:example:transit:1\">&lol2;</TransitDeclaration>";
    let external = "<TransitDeclaration xmlns=\"urn:example:transit:1\">&xxe;</TransitDeclaration>";
    let truncated = "<TransitDeclaration xmlns=\"urn:example:transit:1\"><Header><Number>1</Num";
    let undeclared = "<q:TransitDeclaration><q:Header/></q:TransitDeclaration>";
    for (name, doc, wanted) in [
        ("deep", deep.as_str(), "levels"),
        ("billion laughs", laughs, "DTD"),
        ("undefined entity", external, "entity"),
        ("truncated", truncated, "not well-formed"),
        ("undeclared prefix", undeclared, "not declared"),
        ("not UTF-8", "<a>\u{0}</a>", ""),
    ] {
        let bytes: Vec<u8> = if name == "not UTF-8" {
            vec![b'<', b'a', b'>', 0xff, 0xfe, b'<', b'/', b'a', b'>']
        } else {
            doc.as_bytes().to_vec()
        };
        let error = xml
            .decode(&bytes)
            .err()
            .unwrap_or_else(|| panic!("{name} was accepted"));
        let text = error.to_string();
        assert!(text.contains(wanted), "{name}: {text}");
        assert!(text.contains("line"), "{name} names no line: {text}");
    }
}

on_both_backends!(mapped_formats_over_http);

async fn mapped_formats_over_http(app: TestApp) {
    // Ingest in the partner's XML: a trip, and what the mapping did not read kept.
    let input = fixture("transit-xml/gt-sv-full/input.xml");
    let reply = app.post("/v1/messages/transit-xml", input.clone()).await;
    assert_eq!(reply.status, 202, "{}", reply.text);
    let trip = reply.json()["trips"][0].as_str().unwrap().to_owned();
    let status = app.trip(&trip).await;
    assert_eq!(status["declaration_id"], "GT-2026-T-000123");
    assert_eq!(
        status["equipment"][0]["seals"][0]["device_id"],
        "860000000000001"
    );
    assert_eq!(
        app.count_where(
            "messages",
            "format = 'transit-xml' and unmapped like '%Remarks%'"
        )
        .await,
        1
    );
    // The same document again, format detected: the first answer.
    let detected = app.post("/v1/messages", input.clone()).await;
    assert_eq!(detected.status, 202, "{}", detected.text);
    assert_eq!(detected.headers["idempotent-replayed"], "true");

    // The trip in the partner's format.
    let reply = app
        .get(&format!("/v1/trips/{trip}?format=transit-xml"))
        .await;
    assert_eq!(reply.status, 200, "{}", reply.text);
    assert!(reply.content_type().starts_with("application/xml"));
    assert!(
        reply.text.contains("<t:State>REG</t:State>"),
        "{}",
        reply.text
    );
    assert_eq!(
        app.get(&format!("/v1/trips/{trip}?format=nope"))
            .await
            .status,
        404
    );

    // Translate only: nothing stored.
    let trips_before = app.count("trips").await;
    let reply = app
        .post("/v1/translate?from=transit-xml&to=ects-json", input.clone())
        .await;
    assert_eq!(reply.status, 200, "{}", reply.text);
    let t = reply.json();
    assert_eq!(t["message"], "declaration");
    assert_eq!(t["canonical"]["vehicle"]["trailer_plate"], "TC456DDD");
    assert_eq!(t["unmapped"], json!(["/TransitDeclaration/Remarks"]));
    let output: Value = serde_json::from_str(t["output"].as_str().unwrap()).unwrap();
    assert_eq!(output["goods"][0]["gross_mass_kg"], 26072.0);
    assert_eq!(app.count("trips").await, trips_before);

    // Refusals name both ends.
    let reply = app
        .post(
            "/v1/translate?from=transit-xml&to=ects-json",
            fixture("transit-xml/bad-date/input.xml"),
        )
        .await;
    assert_eq!(reply.status, 422, "{}", reply.text);
    let problem = &reply.json()["errors"][0];
    assert_eq!(problem["path"], "/TransitDeclaration/Header/Issued");
    assert_eq!(problem["canonical"], "/declared_at");
    assert_eq!(problem["line"], 2);
    let reply = app
        .post(
            "/v1/translate?from=ects-json&to=transit-xml",
            fixture("canonical-json/seal-too-long-for-transit-xml/input.json"),
        )
        .await;
    assert_eq!(reply.status, 422, "{}", reply.text);
    assert_eq!(
        reply.json()["errors"][0]["canonical"],
        "/equipment/0/seals/0/id"
    );
    assert_eq!(
        app.post("/v1/translate?from=nope&to=ects-json", input)
            .await
            .status,
        404
    );
    let formats = app.get("/v1/formats").await.json();
    let ids: Vec<&str> = formats["formats"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["id"].as_str().unwrap())
        .collect();
    assert!(
        ids.contains(&"transit-xml") && ids.contains(&"transit-flat"),
        "{ids:?}"
    );
}
