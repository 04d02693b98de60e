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

fn gateway_in(dir: &std::path::Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_ects-gateway"))
        .args(args)
        .current_dir(dir)
        .env_remove("ECTS_DATABASE_URL")
        .env_remove("ECTS_CONFIG")
        .env_remove("ECTS_MAPPINGS")
        .output()
        .expect("the binary runs")
}

fn copy_tree(from: &std::path::Path, to: &std::path::Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_tree(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), &target).unwrap();
        }
    }
}

/// The repository's mappings and fixture cases alone in a fresh folder: nothing beside
/// them, as in a fresh clone.
fn fresh_checkout() -> tempfile::TempDir {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let dir = tempfile::tempdir().unwrap();
    let repo = dir.path().join("ects-gateway");
    for part in [
        "mappings",
        "tests/formats",
        "tests/fixtures",
        "tests/mappings",
    ] {
        copy_tree(&root.join(part), &repo.join(part));
    }
    dir
}

/// `(passed, failed)` from the last line, which must be the counts.
fn counts(stdout: &str) -> (usize, usize) {
    let last = stdout.lines().last().unwrap_or_default();
    let numbers: Vec<usize> = last
        .strip_prefix("mapping cases: ")
        .unwrap_or_else(|| panic!("the output does not end with the counts: {last:?}"))
        .split(|c: char| !c.is_ascii_digit())
        .filter_map(|n| n.parse().ok())
        .collect();
    assert_eq!(numbers.len(), 2, "{last}");
    (numbers[0], numbers[1])
}

#[test]
fn mapping_test_with_no_argument_passes_on_the_shipped_formats_in_a_fresh_checkout() {
    let dir = fresh_checkout();
    let repo = dir.path().join("ects-gateway");
    let out = gateway_in(&repo, &["mapping", "test"]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let (passed, failed) = counts(&stdout);
    assert_eq!(failed, 0, "{stdout}");
    assert!(passed >= 60, "{stdout}");
    for format in ["wco-dm", "asycuda", "duca-t", "icegate-csn", "icegate-flat"] {
        assert!(stdout.contains(&format!("ok    {format}/")), "{stdout}");
    }

    // One format alone.
    let out = gateway_in(&repo, &["mapping", "test", "--format", "duca-t"]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{stdout}");
    let (passed, failed) = counts(&stdout);
    assert_eq!(failed, 0);
    assert!(passed >= 5, "{stdout}");
    assert!(
        stdout
            .lines()
            .filter(|l| l.starts_with("ok") || l.starts_with("FAIL"))
            .all(|l| l.contains(" duca-t/")),
        "{stdout}"
    );
    let none = gateway_in(&repo, &["mapping", "test", "--format", "edifact"]);
    assert_eq!(none.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&none.stderr).contains("\"edifact\""));

    // The test-only formats run when pointed at, with their mappings...
    let out = gateway_in(
        &repo,
        &[
            "--mappings",
            "tests/mappings",
            "mapping",
            "test",
            "tests/fixtures",
        ],
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{stdout}");
    assert_eq!(counts(&stdout).1, 0);
    // ...and without them each case says what is missing; the counts still come last.
    let out = gateway_in(&repo, &["mapping", "test", "tests/fixtures"]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{stdout}");
    assert!(stdout.contains("--mappings"), "{stdout}");
    assert!(counts(&stdout).1 > 0);

    // Outside a checkout the error names the folder it looked for.
    let out = gateway_in(dir.path(), &["mapping", "test"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("tests/formats"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn validate_says_a_json_error_once_and_that_xml_is_not_json() {
    let dir = tempfile::tempdir().unwrap();
    let broken = dir.path().join("broken.json");
    std::fs::write(&broken, "{\n  \"declaration_id\": \"X\",\n  oops\n}\n").unwrap();
    let out = gateway(&[
        "validate",
        "--format",
        "ects-json",
        broken.to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(stderr.matches("line 3").count(), 1, "{stderr}");
    assert!(!stderr.contains("line 3 column"), "{stderr}");

    let xml = format!(
        "{}/tests/formats/wco-dm/hmrc-tt-ex001a/input.xml",
        env!("CARGO_MANIFEST_DIR")
    );
    let out = gateway(&["validate", "--format", "ects-json", &xml]);
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("not JSON"), "{stderr}");
    assert!(stderr.contains("XML"), "{stderr}");
    assert_eq!(stderr.matches("line 1").count(), 1, "{stderr}");
}

#[test]
fn translate_summarises_the_unmapped_parts_and_lists_them_on_request() {
    let dec = format!(
        "{}/tests/formats/wco-dm/hmrc-tt-ex001a/input.xml",
        env!("CARGO_MANIFEST_DIR")
    );
    let mappings = format!("{}/mappings", env!("CARGO_MANIFEST_DIR"));
    let args = [
        "--mappings",
        &mappings,
        "translate",
        "--from",
        "wco-dm",
        "--to",
        "ects-json",
        &dec,
    ];
    let out = gateway(&args);
    assert_eq!(out.status.code(), Some(0));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(serde_json::from_slice::<serde_json::Value>(&out.stdout).is_ok());
    assert!(stderr.lines().count() <= 3, "{stderr}");
    assert!(stderr.contains("--unmapped"), "{stderr}");
    let all = gateway(&[&args[..], &["--unmapped"]].concat());
    assert_eq!(all.status.code(), Some(0));
    let listed = String::from_utf8_lossy(&all.stderr)
        .lines()
        .filter(|l| l.contains(": unmapped "))
        .count();
    assert!(listed > 10, "{}", String::from_utf8_lossy(&all.stderr));
    assert!(
        stderr.contains(&format!("{listed} parts not mapped")),
        "{stderr}"
    );
}

/// `token create` prints the token alone on its last line; a running gateway takes it at
/// once, `token list` never shows a secret, and `token revoke` is seen at the next request.
async fn tokens_are_made_listed_and_revoked_against_a_running_gateway(
    app: crate::helpers::TestApp,
) {
    let key = app.key_file.display().to_string();
    let base = [
        "--database-url",
        app.database_url.as_str(),
        "--token-key-file",
        key.as_str(),
        "token",
    ];
    let run = |args: &[&str]| {
        let mut all: Vec<&str> = base.to_vec();
        all.extend_from_slice(args);
        gateway(&all)
    };
    let made = run(&[
        "create",
        "--role",
        "officer",
        "--name",
        "ke-officer-1",
        "--authority",
        "KE-KRA",
        "--expires",
        "30d",
    ]);
    let stdout = String::from_utf8_lossy(&made.stdout).to_string();
    assert!(
        made.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&made.stderr)
    );
    let token = stdout.lines().last().unwrap_or_default().to_owned();
    assert!(
        token.starts_with("ects_") && !token.contains(' '),
        "{stdout}"
    );
    let trips = app
        .send(
            app.anonymous
                .get(format!("{}/v1/trips", app.address))
                .bearer_auth(&token),
        )
        .await;
    assert_eq!(trips.status, 200, "{}", trips.text);

    // Checked: an officer needs an authority, names are unique, expiry is bounded.
    for bad in [
        vec!["create", "--role", "officer", "--name", "no-authority"],
        vec!["create", "--role", "operator", "--name", "ke-officer-1"],
        vec![
            "create",
            "--role",
            "operator",
            "--name",
            "far",
            "--expires",
            "4000d",
        ],
        vec!["create", "--role", "root", "--name", "x"],
        vec!["create", "--role", "operator", "--name", "bad name"],
    ] {
        let out = run(&bad);
        assert!(!out.status.success(), "{bad:?} was accepted");
    }

    let list = run(&["list"]);
    let listed = String::from_utf8_lossy(&list.stdout).to_string();
    assert!(
        listed.contains("ke-officer-1") && listed.contains("KE-KRA"),
        "{listed}"
    );
    let secret = token.rsplit('_').next().unwrap_or_default();
    assert!(!listed.contains(secret), "the secret is listed: {listed}");

    let revoked = run(&["revoke", "ke-officer-1"]);
    assert!(revoked.status.success());
    let after = app
        .send(
            app.anonymous
                .get(format!("{}/v1/trips", app.address))
                .bearer_auth(&token),
        )
        .await;
    assert_eq!(after.status, 401, "{}", after.text);
    assert!(String::from_utf8_lossy(&run(&["list"]).stdout).contains("revoked"));
}

crate::on_both_backends!(tokens_are_made_listed_and_revoked_against_a_running_gateway);

/// `serve` on a non-loopback address without TLS stops at once, saying what to configure;
/// `--allow-plain-http` (`ECTS_ALLOW_PLAIN_HTTP`) is the explicit way round it.
#[test]
fn plain_http_off_loopback_is_refused_at_start() {
    let dir = tempfile::tempdir().unwrap();
    let out = gateway_in(dir.path(), &["--listen", "0.0.0.0:0", "serve"]);
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("0.0.0.0:0 is not a loopback address")
            && stderr.contains("[http.tls]")
            && stderr.contains("allow_plain_http"),
        "{stderr}"
    );
    assert!(
        !dir.path().join("data").exists(),
        "refused before touching the database"
    );
}
