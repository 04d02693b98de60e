use crate::helpers::{TestApp, fixture};
use crate::on_both_backends;

on_both_backends!(
    health_and_readiness,
    metrics_count_requests_and_messages,
    openapi_lists_every_route,
    unknown_routes_get_a_json_404_and_every_answer_a_request_id,
);

async fn health_and_readiness(app: TestApp) {
    let health = app.get("/healthz").await;
    assert_eq!(health.status, 200);
    assert_eq!(health.json()["status"], "ok");
    let ready = app.get("/readyz").await;
    assert_eq!(ready.status, 200, "{}", ready.text);
    assert_eq!(ready.json()["database"], "ok");

    // With the database gone, the gateway says it is not ready.
    app.store.close().await;
    let not_ready = app.get("/readyz").await;
    assert_eq!(not_ready.status, 503);
    assert_eq!(not_ready.json()["status"], "not_ready");
}

async fn metrics_count_requests_and_messages(app: TestApp) {
    app.declare_gt_sv().await;
    app.post_message(b"{".to_vec()).await;
    let metrics = app.get("/metrics").await;
    assert_eq!(metrics.status, 200);
    assert!(metrics.content_type().starts_with("text/plain"));
    let text = metrics.text;
    assert!(
        text.contains(r#"ects_messages_in_total{format="ects-json",outcome="accepted"} 1"#),
        "{text}"
    );
    assert!(text.contains(r#"ects_messages_in_total{format="ects-json",outcome="rejected"} 1"#));
    assert!(text.contains(
        r#"ects_http_requests_total{method="POST",route="/v1/messages/{format}",status="202"} 1"#
    ));
    assert!(text.contains("ects_http_request_duration_seconds_bucket"));
}

async fn openapi_lists_every_route(app: TestApp) {
    let doc = app.get("/openapi.json").await;
    assert_eq!(doc.status, 200);
    let doc = doc.json();
    assert!(
        doc["openapi"].as_str().unwrap().starts_with("3.1"),
        "{}",
        doc["openapi"]
    );
    let paths = doc["paths"].as_object().unwrap();
    for (path, method) in [
        ("/v1/messages/{format}", "post"),
        ("/v1/messages", "post"),
        ("/v1/seal-events", "post"),
        ("/v1/corridors/{id}", "put"),
        ("/v1/zones/{id}", "put"),
        ("/v1/trips/{id}", "get"),
        ("/v1/trips", "get"),
        ("/v1/trips/{id}/events", "get"),
        ("/v1/trips/{id}/conflicts", "get"),
        ("/v1/alerts", "get"),
        ("/v1/trips/{id}/release", "post"),
        ("/v1/trips/{id}/handover", "post"),
        ("/v1/trips/{id}/cancel", "post"),
        ("/v1/trips/{id}/audit", "get"),
        ("/healthz", "get"),
        ("/readyz", "get"),
        ("/metrics", "get"),
        ("/openapi.json", "get"),
        ("/v1/devices/{device}/keys/{key_id}", "put"),
        ("/v1/devices/{device}/keys/{key_id}", "delete"),
        ("/v1/devices/{device}/keys", "get"),
        ("/v1/devices/{device}", "put"),
        ("/v1/devices/{device}/refused-events", "get"),
    ] {
        assert!(
            paths.get(path).and_then(|p| p.get(method)).is_some(),
            "{method} {path} missing"
        );
    }
    assert!(doc["components"]["schemas"]["TripStatus"].is_object());
    assert!(doc["components"]["schemas"]["TransitDeclaration"].is_object());
}

async fn unknown_routes_get_a_json_404_and_every_answer_a_request_id(app: TestApp) {
    let reply = app.get("/v2/nothing").await;
    assert_eq!(reply.status, 404);
    assert_eq!(reply.content_type(), "application/problem+json");
    assert_eq!(reply.json()["status"], 404);
    let unknown_format = app
        .post(
            "/v1/messages/edifact",
            fixture("ects-json/declaration-ke-ug.json"),
        )
        .await;
    assert_eq!(unknown_format.status, 404);
    assert!(
        unknown_format.json()["detail"]
            .as_str()
            .unwrap()
            .contains("ects-json")
    );
    let detected = app
        .post("/v1/messages", fixture("ects-json/declaration-ke-ug.json"))
        .await;
    assert_eq!(detected.status, 202, "{}", detected.text);
    for r in [&reply, &detected] {
        let id = r.headers["x-request-id"].to_str().unwrap();
        assert!(uuid::Uuid::parse_str(id).is_ok());
        // The request's log lines carry the same id.
        let lines = crate::helpers::log_lines_with(id);
        assert!(
            lines
                .iter()
                .any(|l| l["fields"]["message"] == "request answered"),
            "no access log line with request id {id}"
        );
    }
}
