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

fn product_formats() -> ects_gateway::formats::Formats {
    let settings = Settings {
        mappings_dir: std::path::PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/mappings")),
        ..Settings::default()
    };
    ects_gateway::startup::formats(&settings).expect("the product mappings compile")
}

fn product_case(path: &str) -> Vec<u8> {
    crate::helpers::repo_file(&format!("tests/formats/{path}"))
}

#[test]
fn the_shipped_formats_pass_their_fixture_cases() {
    let dir = std::path::Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/formats"));
    let results = ects_gateway::mapping::harness::run(&product_formats(), dir);
    let failed: Vec<String> = results
        .iter()
        .filter(|r| !r.failures.is_empty())
        .map(|r| format!("{}/{}: {}", r.format, r.case, r.failures.join("; ")))
        .collect();
    assert!(failed.is_empty(), "{failed:#?}");
    for format in [
        "wco-dm",
        "asycuda",
        "icegate-csn",
        "icegate-flat",
        "duca-t",
        "cbic-eseal",
    ] {
        let cases: Vec<_> = results.iter().filter(|r| r.format == format).collect();
        assert!(cases.len() >= 5, "{format}: {} cases", cases.len());
        assert!(
            cases.iter().filter(|r| r.case.starts_with("bad-")).count() >= 4,
            "{format}: the refusals are tested"
        );
    }
}

/// Runs `xmllint --schema` on a document against the official WCO schemas (vendored in
/// `tests/official/wco/xsd/`).
pub fn xmllint(schema: &str, body: &[u8]) -> Result<(), String> {
    let schema = crate::helpers::official(&format!("wco/xsd/{schema}"));
    assert!(schema.exists(), "no schema {}", schema.display());
    let file = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(file.path(), body).unwrap();
    let out = std::process::Command::new("xmllint")
        .args(["--noout", "--schema"])
        .arg(&schema)
        .arg(file.path())
        .output()
        .map_err(|e| format!("xmllint could not run (install libxml2-utils): {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into_owned())
    }
}

#[test]
fn written_wco_declarations_and_responses_validate_against_the_official_schemas() {
    let formats = product_formats();
    let wco = formats.get("wco-dm").unwrap();
    let mut checked = 0;
    for (from, case) in [
        ("ects-json", "ects-json/ug-rw-two-containers/input.json"),
        ("asycuda", "asycuda/transit-one-container/input.xml"),
        ("asycuda", "asycuda/transit-two-containers/input.xml"),
        ("asycuda", "asycuda/real-caa-tirana-import/input.xml"),
        ("wco-dm", "wco-dm/hmrc-tt-ex001a/input.xml"),
    ] {
        let decoded = formats
            .get(from)
            .unwrap()
            .decode(&product_case(case))
            .unwrap();
        let ects_gateway::formats::Inbound::Declaration(d) = &decoded.inbound else {
            panic!("{case} is a declaration");
        };
        let written = wco
            .encode(&ects_gateway::formats::Outbound::Declaration(d))
            .unwrap();
        xmllint("declaration/DEC_envelope.xsd", &written.body)
            .unwrap_or_else(|e| panic!("{case}: {e}\n{}", String::from_utf8_lossy(&written.body)));
        checked += 1;
    }
    for case in ["alert-deviation", "released-late"] {
        let n: ects_core::StatusNotification = serde_json::from_slice(&product_case(&format!(
            "ects-notification/{case}/input.json"
        )))
        .unwrap();
        let written = wco
            .encode(&ects_gateway::formats::Outbound::StatusNotification(&n))
            .unwrap();
        xmllint("notification/RES_envelope.xsd", &written.body)
            .unwrap_or_else(|e| panic!("{case}: {e}"));
        checked += 1;
        // As the outbox sends it: with our reference, for an answer to name.
        let reference = "0190b8a43c2e7d7f9a1b2c3d4e5f6a7b";
        let written = wco
            .encode(&ects_gateway::formats::Outbound::Answerable(&n, reference))
            .unwrap();
        let text = String::from_utf8_lossy(&written.body);
        assert!(
            text.contains(&format!(
                "<FunctionalReferenceID>{reference}</FunctionalReferenceID>"
            )),
            "{text}"
        );
        xmllint("notification/RES_envelope.xsd", &written.body)
            .unwrap_or_else(|e| panic!("{case} with a reference: {e}\n{text}"));
        checked += 1;
    }
    // Every WCO document the fixture cases expect (and so the gateway writes), whatever
    // format it came from: DUCA-T, ICEGATE, notifications.
    let root = std::path::Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/formats"));
    let mut expected = 0;
    for format in std::fs::read_dir(root).unwrap().flatten() {
        for case in std::fs::read_dir(format.path()).unwrap().flatten() {
            let file = case.path().join("expected.wco-dm.xml");
            let Ok(body) = std::fs::read(&file) else {
                continue;
            };
            let schema = if format.file_name() == "ects-notification" {
                "notification/RES_envelope.xsd"
            } else {
                "declaration/DEC_envelope.xsd"
            };
            xmllint(schema, &body).unwrap_or_else(|e| panic!("{}: {e}", file.display()));
            expected += 1;
        }
    }
    assert!(expected >= 8, "{expected} expected WCO documents checked");
    // The check can fail: a DEC out of the schema's order is refused.
    let bad = String::from_utf8(product_case("wco-dm/ug-rw-transit/input.xml"))
        .unwrap()
        .replace(
            "<FunctionCode>9</FunctionCode>",
            "<FunctionCode>7</FunctionCode>",
        );
    assert!(xmllint("declaration/DEC_envelope.xsd", bad.as_bytes()).is_err());
    assert_eq!(checked, 9);
}

#[test]
fn a_wco_declaration_through_asycuda_and_back_keeps_its_identity_offices_plates_and_seals() {
    let formats = product_formats();
    let dec = product_case("wco-dm/ug-rw-transit/input.xml");
    let there = ects_gateway::translate::translate(&formats, "wco-dm", "asycuda", &dec).unwrap();
    let back =
        ects_gateway::translate::translate(&formats, "asycuda", "wco-dm", there.output.as_bytes())
            .unwrap();
    let again =
        ects_gateway::translate::translate(&formats, "wco-dm", "ects-json", back.output.as_bytes())
            .unwrap();
    let (a, b) = (&there.canonical, &again.canonical);
    for pointer in [
        "/declaration_id",
        "/office_of_departure",
        "/office_of_destination",
        "/offices_of_transit",
        "/vehicle",
        "/equipment",
    ] {
        assert_eq!(a.pointer(pointer), b.pointer(pointer), "{pointer}");
    }
    assert_eq!(b["equipment"][1]["seals"][0]["id"], "ES00781235");
    assert_eq!(b["vehicle"]["trailer_plate"], "UZ4567");
    assert!(back.problems.is_empty(), "{:?}", back.problems);

    // A SAD that does not tie its seals: the DEC cannot hold them, and says so.
    let sad = product_case("asycuda/transit-two-containers/input.xml");
    let dec = ects_gateway::translate::translate(&formats, "asycuda", "wco-dm", &sad).unwrap();
    assert!(
        dec.problems
            .iter()
            .any(|p| p.pointer.as_deref() == Some("/seals")
                && p.detail.contains("ES-00781234, ES-00781235")),
        "{:?}",
        dec.problems
    );
}

#[test]
fn the_real_asycuda_exports_are_read() {
    let formats = product_formats();
    let sad = formats.get("asycuda").unwrap();
    let caa = product_case("asycuda/real-caa-tirana-import/input.xml");
    let decoded = sad.decode(&caa).unwrap();
    let canonical = Value::from(&decoded.inbound);
    // Nine container segments, one per goods item, are one container.
    assert_eq!(canonical["equipment"].as_array().unwrap().len(), 1);
    assert_eq!(canonical["goods"].as_array().unwrap().len(), 9);
    // The unregistered FORD export has neither a registration nor a declarant's number:
    // it reads under a provisional id that says so, with its offices and plates.
    let ford = product_case("asycuda/real-ford-unregistered/input.xml");
    let decoded = sad.decode(&ford).unwrap();
    let canonical = Value::from(&decoded.inbound);
    assert_eq!(canonical["declaration_id"], "J029/UNREGISTERED/AL110000");
    assert_eq!(canonical["offices_of_transit"][0]["code"], "AL020000");
    assert_eq!(canonical["vehicle"]["plate"], "PGEU559");
    assert_eq!(canonical["vehicle"]["trailer_plate"], "PG8411AA");
}

#[test]
fn a_dms_notification_without_namespaces_is_refused_naming_both_namespaces() {
    let formats = product_formats();
    let wco = formats.get("wco-dm").unwrap();
    for sample in [
        "DMS_notification_01_DMSACC.xml",
        "DMS_notification_03_DMSREJ.xml",
    ] {
        let body = crate::helpers::repo_file(&format!("tests/official/wco/samples/{sample}"));
        let problems = wco.decode(&body).unwrap_err().into_problems();
        let detail = &problems[0].detail;
        assert!(
            detail.contains("MetaData in no namespace")
                && detail
                    .contains("MetaData in namespace urn:wco:datamodel:WCO:DocumentMetaData-DMS:2"),
            "{sample}: {detail}"
        );
        assert!(!detail.contains('{'), "{detail}");
    }
}
