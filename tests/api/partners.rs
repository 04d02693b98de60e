//! What a partner sees over HTTP: with its API token, only the trips its sharing rules
//! allow (its country's, the declarations it filed), and its own outbound messages.

use serde_json::Value;

use crate::amqp::declaration;
use crate::helpers::{Backend, TestApp, fixture, product_mappings_dir, spawn_app_with};

fn sha256(token: &str) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(token.as_bytes()))
}

async fn get_as(app: &TestApp, token: &str, path: &str) -> (u16, Value) {
    let response = app
        .client
        .get(format!("{}{path}", app.address))
        .header("authorization", format!("Bearer {token}"))
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or_default())
}

fn ids(list: &Value) -> Vec<String> {
    let mut ids: Vec<String> = list["trips"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["trip_id"].as_str().unwrap().to_owned())
        .collect();
    ids.sort();
    ids
}

async fn a_partner_sees_what_its_sharing_rules_allow(backend: Backend) {
    let partner = |id: &str, authority: &str, sees: &str| {
        toml::from_str::<ects_gateway::partners::PartnerConfig>(&format!(
            "id = \"{id}\"\nauthority = \"{authority}\"\nformat = \"ects-json\"\nsees = \"{sees}\"\n\
             api_token_sha256 = \"{}\"\n",
            sha256(&format!("{id}-token"))
        ))
        .unwrap()
    };
    let Some(app) = spawn_app_with(backend, product_mappings_dir(), |s| {
        s.partners = vec![
            partner("sv-customs", "SV", "parties"),
            partner("mx-customs", "MX", "parties"),
            partner("gt-window", "GT", "filed"),
        ];
    })
    .await
    else {
        return;
    };
    // The operator declares one transit; the single window files another with its token.
    let operators = app
        .post_message(fixture("ects-json/declaration-gt-sv.json"))
        .await;
    assert_eq!(operators.status, 202, "{}", operators.text);
    let operators = operators.json()["trips"][0].as_str().unwrap().to_owned();
    let (body, _) = declaration(42);
    let filed = app
        .client
        .post(format!("{}/v1/messages", app.address))
        .header("authorization", "Bearer gt-window-token")
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(filed.status(), 202);
    let filed: Value = filed.json().await.unwrap();
    let filed = filed["trips"][0].as_str().unwrap().to_owned();

    // SV is on both itineraries; MX on neither; the single window sees what it filed.
    let mut both = vec![operators.clone(), filed.clone()];
    both.sort();
    assert_eq!(
        ids(&get_as(&app, "sv-customs-token", "/v1/trips").await.1),
        both
    );
    assert!(ids(&get_as(&app, "mx-customs-token", "/v1/trips").await.1).is_empty());
    assert_eq!(
        ids(&get_as(&app, "gt-window-token", "/v1/trips").await.1),
        std::slice::from_ref(&filed)
    );
    assert_eq!(
        ids(&app.get("/v1/trips").await.json()),
        both,
        "the operator"
    );

    // A trip it may not see does not exist for it, by id, events, audit or reference.
    for path in [
        format!("/v1/trips/{operators}"),
        format!("/v1/trips/{operators}/events"),
        format!("/v1/trips/{operators}/conflicts"),
        format!("/v1/trips/{operators}/audit"),
    ] {
        assert_eq!(
            get_as(&app, "gt-window-token", &path).await.0,
            404,
            "{path}"
        );
        assert_eq!(
            get_as(&app, "sv-customs-token", &path).await.0,
            200,
            "{path}"
        );
    }
    let (_, by_reference) = get_as(
        &app,
        "mx-customs-token",
        "/v1/trips?reference=GT-2026-T-000123",
    )
    .await;
    assert!(ids(&by_reference).is_empty());
    // Nor can it act on it.
    let release = app
        .client
        .post(format!("{}/v1/trips/{operators}/release", app.address))
        .header("authorization", "Bearer mx-customs-token")
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(release.status(), 404);

    // An unknown token, or another scheme, is refused; a partner does not retry deliveries.
    let (status, problem) = get_as(&app, "not-a-token", "/v1/trips").await;
    assert_eq!(status, 401);
    assert!(
        problem["detail"].as_str().unwrap().contains("token"),
        "{problem}"
    );
    let basic = app
        .client
        .get(format!("{}/v1/trips", app.address))
        .header("authorization", "Basic Zm9vOmJhcg==")
        .send()
        .await
        .unwrap();
    assert_eq!(basic.status(), 401);
    let retry = app
        .client
        .post(format!("{}/v1/outbox/1/retry", app.address))
        .header("authorization", "Bearer sv-customs-token")
        .send()
        .await
        .unwrap();
    assert_eq!(retry.status(), 403);
    // Geography and thresholds are the operator's; a partner acts only as its country.
    let put = app
        .client
        .put(format!("{}/v1/zones/GTPQZ", app.address))
        .header("authorization", "Bearer sv-customs-token")
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(put.status(), 403);
    let rules = app
        .client
        .put(format!("{}/v1/trips/{operators}/rules", app.address))
        .header("authorization", "Bearer sv-customs-token")
        .body("{\"max_stop_s\": 600}")
        .send()
        .await
        .unwrap();
    assert_eq!(rules.status(), 403);
    let as_gt = app
        .client
        .post(format!("{}/v1/trips/{operators}/release", app.address))
        .header("authorization", "Bearer sv-customs-token")
        .header("content-type", "application/json")
        .body(crate::tracking::release(&operators, "GT", "SVSAL").to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(as_gt.status(), 403, "SV may not release as GT");
}

mod sharing_rules {
    #[tokio::test]
    async fn sqlite() {
        super::a_partner_sees_what_its_sharing_rules_allow(super::Backend::Sqlite).await;
    }

    #[tokio::test]
    async fn postgres() {
        super::a_partner_sees_what_its_sharing_rules_allow(super::Backend::Postgres).await;
    }
}

#[tokio::test]
async fn a_partner_the_gateway_cannot_serve_stops_it_from_starting() {
    let dir = tempfile::tempdir().unwrap();
    for (entry, expected) in [
        (
            "id = \"ke\"\nauthority = \"KE\"\nformat = \"no-such-format\"\n",
            "format \"no-such-format\" is not loaded",
        ),
        (
            "id = \"ke\"\nauthority = \"KE\"\nformat = \"wco-dm\"\nversion = \"1.0\"\n",
            "version \"1.0\" of wco-dm",
        ),
        (
            "id = \"ke\"\nauthority = \"KE\"\nformat = \"cbic-eseal\"\nsubscribe = [\"status\"]\n",
            "cannot write notifications",
        ),
    ] {
        let mut settings = crate::helpers::test_settings(product_mappings_dir());
        settings.database_url =
            secrecy::SecretString::from(format!("sqlite://{}/ects.db", dir.path().display()));
        settings.partners = vec![toml::from_str(entry).unwrap()];
        let error = match ects_gateway::startup::Application::build(settings).await {
            Ok(_) => panic!("{entry}: the gateway started"),
            Err(e) => format!("{e:#}"),
        };
        assert!(
            error.contains("partners[0] (\"ke\")") && error.contains(expected),
            "{error}"
        );
    }
}
