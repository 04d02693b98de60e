//! The command line, run as a user runs it.

use std::process::{Command, Output};

fn gateway(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_ects-gateway"))
        .args(args)
        .env_remove("ECTS_DATABASE_URL")
        .env_remove("ECTS_CONFIG")
        .output()
        .expect("the binary runs")
}

fn fixture_path(name: &str) -> String {
    format!(
        "{}/tests/fixtures/ects-json/{name}",
        env!("CARGO_MANIFEST_DIR")
    )
}

#[test]
fn formats_lists_the_canonical_format() {
    let out = gateway(&["formats"]);
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains("ects-json"));
}

#[test]
fn validate_accepts_good_documents_and_locates_problems() {
    let ok = gateway(&[
        "validate",
        "--format",
        "ects-json",
        &fixture_path("declaration-gt-sv.json"),
    ]);
    assert_eq!(
        ok.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&ok.stderr)
    );
    assert!(String::from_utf8_lossy(&ok.stdout).contains("GT-2026-T-000123"));

    let bad = gateway(&[
        "validate",
        "--format",
        "ects-json",
        &fixture_path("invalid/event-lat-91.json"),
    ]);
    assert_eq!(bad.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&bad.stderr);
    assert!(stderr.contains("/position/lat"), "{stderr}");

    let unknown = gateway(&[
        "validate",
        "--format",
        "edifact",
        &fixture_path("declaration-gt-sv.json"),
    ]);
    assert_eq!(unknown.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&unknown.stderr).contains("unknown format"));
}

#[test]
fn migrate_creates_the_sqlite_database() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("nested/dir/ects.db");
    let url = format!("sqlite://{}", db.display());
    let out = gateway(&["migrate", "--database-url", &url]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(db.exists());
    // Running it again is harmless.
    assert!(
        gateway(&["migrate", "--database-url", &url])
            .status
            .success()
    );
}

#[test]
fn a_broken_configuration_file_is_reported_with_file_and_line() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("gateway.toml");
    std::fs::write(
        &path,
        "listen = \"127.0.0.1:0\"\nmax_body_bytes = \"lots\"\n",
    )
    .unwrap();
    let out = gateway(&["--config", path.to_str().unwrap(), "formats"]);
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("gateway.toml") && stderr.contains("line 2"),
        "{stderr}"
    );
}
