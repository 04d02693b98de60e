//! Partners' answers to what the outbox sent them, end to end: an ICEGATE ACK (the real
//! ACK samples of `tests/replies/icegate`) and a WCO DMS notification (HMRC's DMSACC and
//! DMSREJ samples of `tests/official/wco/samples`), each made to name a message the
//! partner received, posted back over HTTP and over the partner's AMQP queue, and then
//! shown on that outbox row by `GET /v1/outbox`. An answer from another partner, or
//! naming nothing sent, is kept as a rejected message and refused.

use std::sync::{Arc, Mutex};

use actix_web::{App, HttpRequest, HttpResponse, HttpServer, web};
use serde_json::Value;
use sha2::Digest;

use crate::helpers::{
    Backend, Reply, TEST_BODY_LIMIT, TestApp, product_mappings_dir, spawn_app_with,
};
use crate::tracking::{Seq, rolling};

/// One delivery the partners' endpoint took.
#[derive(Debug, Clone)]
struct Hit {
    format: String,
    message_id: String,
    body: Vec<u8>,
}

type Hits = Arc<Mutex<Vec<Hit>>>;

async fn receive(req: HttpRequest, body: web::Bytes, hits: web::Data<Hits>) -> HttpResponse {
    let header = |name: &str| {
        req.headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned()
    };
    hits.lock().unwrap().push(Hit {
        format: header("x-ects-format"),
        message_id: header("x-ects-message-id"),
        body: body.to_vec(),
    });
    HttpResponse::Ok().finish()
}

fn start_endpoint() -> (String, Hits) {
    let hits: Hits = Arc::default();
    let data = web::Data::new(hits.clone());
    let server = HttpServer::new(move || {
        App::new()
            .app_data(data.clone())
            .route("/in", web::post().to(receive))
    })
    .workers(1)
    .bind("127.0.0.1:0")
    .expect("a port");
    let url = format!("http://{}/in", server.addrs()[0]);
    tokio::spawn(server.run());
    (url, hits)
}

fn sha256(token: &str) -> String {
    hex::encode(sha2::Sha256::digest(token.as_bytes()))
}

/// Our reference as an ICEGATE document carries it.
fn icegate_reference(body: &[u8]) -> String {
    let doc: Value = serde_json::from_slice(body).expect("ICEGATE JSON");
    doc["headerField"]["sequenceOrControlNumber"]
        .as_str()
        .unwrap_or_else(|| panic!("no reference in {doc}"))
        .to_owned()
}

/// Our reference as a WCO RES carries it (`Response/FunctionalReferenceID`).
fn wco_reference(body: &[u8]) -> String {
    let text = String::from_utf8_lossy(body);
    let start = text
        .find("<FunctionalReferenceID>")
        .unwrap_or_else(|| panic!("no reference in {text}"))
        + "<FunctionalReferenceID>".len();
    let end = start + text[start..].find('<').unwrap();
    text[start..end].to_owned()
}

/// An ICEGATE ACK sample answering the message of `reference`.
pub(crate) fn ack(sample: &str, reference: &str) -> Vec<u8> {
    let mut doc: Value = serde_json::from_slice(&crate::helpers::repo_file(&format!(
        "tests/replies/icegate/F_SACHM22_SCE_EXAMPLEAGT01_{sample}_20250314_ACK.json"
    )))
    .unwrap();
    doc["headerField"]["sequenceOrControlNumber"] = reference.into();
    serde_json::to_vec_pretty(&doc).unwrap()
}

/// HMRC's DMS notification sample (`01_DMSACC`, `03_DMSREJ`) answering `reference`: its
/// declaration's functional reference (the trader's, i.e. the sender's) becomes ours.
pub(crate) fn dms(sample: &str, reference: &str) -> Vec<u8> {
    let text = String::from_utf8(crate::helpers::repo_file(&format!(
        "tests/official/wco/samples/DMS_notification_{sample}.xml"
    )))
    .unwrap();
    let original = match sample {
        "01_DMSACC" => "3.1_P1_TT_1311RM41",
        _ => "Sample_A_TC01_1102_03",
    };
    let tag = |v: &str| format!("<FunctionalReferenceID>{v}</FunctionalReferenceID>");
    assert!(text.contains(&tag(original)), "the sample as vendored");
    text.replace(&tag(original), &tag(reference)).into_bytes()
}

async fn post_as(app: &TestApp, token: Option<&str>, path: &str, body: Vec<u8>) -> Reply {
    let mut request = app.client.post(format!("{}{path}", app.address)).body(body);
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    let response = request
        .send()
        .await
        .expect("the request reaches the server");
    Reply {
        status: response.status().as_u16(),
        headers: response.headers().clone(),
        text: response.text().await.expect("a body"),
    }
}

async fn outbox_as(app: &TestApp, token: Option<&str>, query: &str) -> Value {
    let mut request = app.client.get(format!("{}/v1/outbox?{query}", app.address));
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    let response = request.send().await.unwrap();
    assert_eq!(response.status(), 200);
    response.json().await.unwrap()
}

fn row(rows: &Value, seq: i64) -> &Value {
    rows["messages"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["seq"] == seq)
        .unwrap_or_else(|| panic!("row {seq} in {rows}"))
}

async fn answers_over_http(backend: Backend) {
    let (url, hits) = start_endpoint();
    let partners: Vec<ects_gateway::partners::PartnerConfig> = [
        ("in-ice", "icegate-csn", Some(&url)),
        ("sv-wco", "wco-dm", Some(&url)),
        ("gt-other", "ects-json", None),
    ]
    .iter()
    .map(|(id, format, push)| {
        toml::from_str(&format!(
            "id = \"{id}\"\nauthority = \"{}\"\nformat = \"{format}\"\nsubscribe = [\"status\"]\n\
             api_token_sha256 = \"{}\"\n{}",
            if *id == "gt-other" { "MX" } else { "SV" },
            sha256(&format!("{id}-token")),
            push.map(|u| format!("http_push = \"{u}\"\n"))
                .unwrap_or_default()
        ))
        .unwrap()
    })
    .collect();
    let Some(app) = spawn_app_with(backend, product_mappings_dir(), |s| {
        s.partners = partners;
        s.outbox.poll_ms = 25;
    })
    .await
    else {
        return;
    };
    let mut seq = Seq(0);
    rolling(&app, &mut seq).await;
    // Armed and in transit, to each partner in its format.
    crate::helpers::wait_until("two deliveries to each partner", || {
        let hits = hits.lock().unwrap();
        ["icegate-csn", "wco-dm"]
            .iter()
            .all(|f| hits.iter().filter(|h| h.format == *f).count() >= 2)
    })
    .await;
    let hits = hits.lock().unwrap().clone();
    let of = |format: &str| -> Vec<Hit> {
        let mut seen = std::collections::BTreeSet::new();
        hits.iter()
            .filter(|h| h.format == format && seen.insert(h.message_id.clone()))
            .cloned()
            .collect()
    };
    let (ice, wco) = (of("icegate-csn"), of("wco-dm"));
    let ice_rows = outbox_as(&app, None, "partner=in-ice").await;
    let wco_rows = outbox_as(&app, None, "partner=sv-wco").await;
    let seq_of = |rows: &Value, message_id: &str| -> i64 {
        rows["messages"]
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["message_id"] == message_id)
            .unwrap_or_else(|| panic!("{message_id} in {rows}"))["seq"]
            .as_i64()
            .unwrap()
    };
    // Each document carries our reference: the row's message id, in 32 hex digits.
    let ice_ref: Vec<String> = ice.iter().map(|h| icegate_reference(&h.body)).collect();
    let wco_ref: Vec<String> = wco.iter().map(|h| wco_reference(&h.body)).collect();
    for (hit, reference) in ice.iter().zip(&ice_ref).chain(wco.iter().zip(&wco_ref)) {
        assert_eq!(*reference, hit.message_id.replace('-', ""));
    }
    let ice_seq: Vec<i64> = ice
        .iter()
        .map(|h| seq_of(&ice_rows, &h.message_id))
        .collect();
    let wco_seq: Vec<i64> = wco
        .iter()
        .map(|h| seq_of(&wco_rows, &h.message_id))
        .collect();
    assert!(
        ice_rows["messages"]
            .as_array()
            .unwrap()
            .iter()
            .all(|r| r["answer"].is_null()),
        "no answer yet: {ice_rows}"
    );

    // ICEGATE refuses the first message (the real ACK sample 58), then accepts it (57):
    // both are kept, the latest shows.
    let reply = post_as(
        &app,
        Some("in-ice-token"),
        "/v1/messages",
        ack("58", &ice_ref[0]),
    )
    .await;
    assert_eq!(reply.status, 202, "{}", reply.text);
    let receipt = reply.json();
    assert_eq!(receipt["format"], "icegate-ack");
    assert_eq!(receipt["answered"]["seq"], ice_seq[0]);
    assert_eq!(
        receipt["answered"]["message_id"],
        ice[0].message_id.as_str()
    );
    assert_eq!(receipt["accepted"], false);
    let rows = outbox_as(&app, None, "partner=in-ice").await;
    let answer = &row(&rows, ice_seq[0])["answer"];
    assert_eq!(answer["accepted"], false, "{answer}");
    let reason = answer["reason"].as_str().unwrap();
    assert!(
        reason.contains("84 Invalid seal number at /master/mastrCnsgmtDec/trnsprtEqmt"),
        "{reason}"
    );
    assert_eq!(answer["errors"].as_array().unwrap().len(), 2);
    assert_eq!(answer["errors"][1]["code"], "000|75");
    assert_eq!(answer["answers"], 1);

    let reply = post_as(
        &app,
        Some("in-ice-token"),
        "/v1/messages/icegate-ack",
        ack("57", &ice_ref[0]),
    )
    .await;
    assert_eq!(reply.status, 202, "{}", reply.text);
    let rows = outbox_as(&app, Some("in-ice-token"), "").await;
    let answer = &row(&rows, ice_seq[0])["answer"];
    assert_eq!(answer["accepted"], true, "{answer}");
    assert!(answer["reason"].is_null());
    assert_eq!(answer["reference"], "2000451", "the CSN number");
    assert_eq!(answer["ids"][0], "PCIN:25PC140325100045100");
    assert_eq!(answer["answers"], 2);
    assert_eq!(answer["format"], "icegate-ack");
    assert!(row(&rows, ice_seq[1])["answer"].is_null());

    // WCO: DMSREJ for the first message, DMSACC for the second, over HTTP.
    let reply = post_as(
        &app,
        Some("sv-wco-token"),
        "/v1/messages",
        dms("03_DMSREJ", &wco_ref[0]),
    )
    .await;
    assert_eq!(reply.status, 202, "{}", reply.text);
    assert_eq!(reply.json()["answered"]["seq"], wco_seq[0]);
    let reply = post_as(
        &app,
        Some("sv-wco-token"),
        "/v1/messages/wco-dms",
        dms("01_DMSACC", &wco_ref[1]),
    )
    .await;
    assert_eq!(reply.status, 202, "{}", reply.text);
    let rows = outbox_as(&app, Some("sv-wco-token"), "").await;
    let rejected = &row(&rows, wco_seq[0])["answer"];
    assert_eq!(rejected["accepted"], false, "{rejected}");
    assert!(
        rejected["reason"].as_str().unwrap().contains("CDS12005"),
        "{rejected}"
    );
    assert_eq!(rejected["errors"][0]["path"], "42A/17C/R144");
    assert_eq!(rejected["reference"], "561fb99741a94910913f9bd1e4d4055e");
    assert_eq!(rejected["ids"][0], "MRN:20GB1NA4Y2YSRFGVR6");
    let accepted = &row(&rows, wco_seq[1])["answer"];
    assert_eq!(accepted["accepted"], true, "{accepted}");
    assert_eq!(accepted["format"], "wco-dms");

    // Filters by answer, paging kept.
    let ids = |v: &Value| -> Vec<i64> {
        v["messages"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r["seq"].as_i64().unwrap())
            .collect()
    };
    assert_eq!(
        ids(&outbox_as(&app, None, "answer=rejected").await),
        [wco_seq[0]]
    );
    assert_eq!(
        ids(&outbox_as(&app, None, "answer=none&partner=in-ice").await),
        [ice_seq[1]]
    );
    let page = outbox_as(&app, None, "answer=accepted&limit=1").await;
    assert_eq!(ids(&page), [ice_seq[0]]);
    let next = page["next"].as_str().expect("a next page").to_owned();
    let page = outbox_as(&app, None, &format!("answer=accepted&limit=1&after={next}")).await;
    assert_eq!(ids(&page), [wco_seq[1]]);
    let reply = app.get("/v1/outbox?answer=maybe").await;
    assert_eq!(reply.status, 400, "{}", reply.text);

    // Another partner answering a message not sent to it: refused as if it did not exist,
    // kept; the row is unchanged.
    let evidence = |format: &str| format!("format = '{format}' and outcome = 'rejected'");
    let reply = post_as(
        &app,
        Some("in-ice-token"),
        "/v1/messages",
        dms("03_DMSREJ", &wco_ref[1]),
    )
    .await;
    assert_eq!(reply.status, 404, "{}", reply.text);
    let unknown = post_as(
        &app,
        Some("in-ice-token"),
        "/v1/messages",
        dms("03_DMSREJ", &uuid::Uuid::now_v7().simple().to_string()),
    )
    .await;
    assert_eq!(unknown.status, 404);
    let strip = |r: &Reply| {
        r.json()["detail"]
            .as_str()
            .unwrap()
            .split("reference")
            .next()
            .unwrap()
            .to_owned()
    };
    assert_eq!(
        strip(&reply),
        strip(&unknown),
        "nothing tells the two apart"
    );
    assert_eq!(
        reply.pointers(),
        ["/MetaData/Response/Declaration/FunctionalReferenceID"]
    );
    assert_eq!(app.count_where("messages", &evidence("wco-dms")).await, 2);
    let rows = outbox_as(&app, None, "partner=sv-wco").await;
    assert_eq!(row(&rows, wco_seq[1])["answer"]["accepted"], true);
    assert_eq!(row(&rows, wco_seq[1])["answer"]["answers"], 1);
    // A partner without the message, and a reference that is no message id.
    let reply = post_as(
        &app,
        Some("gt-other-token"),
        "/v1/messages",
        ack("57", &ice_ref[1]),
    )
    .await;
    assert_eq!(reply.status, 404, "{}", reply.text);
    let reply = post_as(&app, Some("in-ice-token"), "/v1/messages", ack("57", "58")).await;
    assert_eq!(reply.status, 404, "{}", reply.text);
    assert_eq!(reply.pointers(), ["/headerField/sequenceOrControlNumber"]);
    assert_eq!(
        app.count_where("messages", &evidence("icegate-ack")).await,
        2
    );
    // Without a partner's token: whose answer it is cannot be told.
    let reply = post_as(&app, None, "/v1/messages", ack("57", &ice_ref[1])).await;
    assert_eq!(reply.status, 403, "{}", reply.text);
    assert!(row(&outbox_as(&app, None, "partner=in-ice").await, ice_seq[1])["answer"].is_null());
    // A partner sees only its own rows' answers.
    let theirs = outbox_as(&app, Some("sv-wco-token"), "partner=in-ice").await;
    assert_eq!(theirs["messages"], serde_json::json!([]));

    // Malformed, invalid and oversized answers: refused with where, kept where read.
    let reply = post_as(
        &app,
        Some("in-ice-token"),
        "/v1/messages",
        br#"{"headerField": {}, "master": {"decRefErrorCode": ["#.to_vec(),
    )
    .await;
    assert_eq!(reply.status, 400, "{}", reply.text);
    let reply = post_as(&app, Some("in-ice-token"), "/v1/messages/icegate-ack", br#"{"headerField": {"messageID": "X"}, "master": {"decRefErrorCode": [{"errorCode": "000"}]}}"#.to_vec()).await;
    assert_eq!(reply.status, 422, "{}", reply.text);
    assert_eq!(reply.pointers(), ["/headerField/sequenceOrControlNumber"]);
    let cleared = dms("01_DMSACC", &wco_ref[1]);
    let cleared = String::from_utf8(cleared)
        .unwrap()
        .replace("<FunctionCode>01<", "<FunctionCode>09<");
    let reply = post_as(
        &app,
        Some("sv-wco-token"),
        "/v1/messages",
        cleared.into_bytes(),
    )
    .await;
    assert_eq!(reply.status, 422, "{}", reply.text);
    assert_eq!(reply.pointers(), ["/MetaData/Response/FunctionCode"]);
    let reply = post_as(
        &app,
        Some("sv-wco-token"),
        "/v1/messages/wco-dms",
        b"<MetaData><Response><FunctionCode>03".to_vec(),
    )
    .await;
    assert_eq!(reply.status, 400, "{}", reply.text);
    let mut big = ack("58", &ice_ref[1]);
    big.truncate(big.len() - 2);
    big.extend(format!(", \"pad\": \"{}\"}}", "x".repeat(TEST_BODY_LIMIT)).bytes());
    let reply = post_as(&app, Some("in-ice-token"), "/v1/messages", big).await;
    assert_eq!(reply.status, 413, "{}", reply.text);
    // A rejection with more errors than are kept: capped, the rest counted.
    let mut many: Value = serde_json::from_slice(&ack("58", &ice_ref[1])).unwrap();
    many["master"]["extraErrorCode"] = (0..200)
        .map(|i| serde_json::json!({"pathName": format!("/x/{i}"), "errorCode": "99", "errorMessage": "bad"}))
        .collect();
    let reply = post_as(
        &app,
        Some("in-ice-token"),
        "/v1/messages",
        serde_json::to_vec(&many).unwrap(),
    )
    .await;
    assert_eq!(reply.status, 202, "{}", reply.text);
    let rows = outbox_as(&app, None, "partner=in-ice").await;
    let answer = &row(&rows, ice_seq[1])["answer"];
    assert_eq!(
        answer["errors"].as_array().unwrap().len(),
        ects_gateway::answers::MAX_ERRORS
    );
    assert!(
        answer["reason"]
            .as_str()
            .unwrap()
            .contains("(and 199 more)"),
        "{answer}"
    );

    // The API description names what an answer is answered with, and the row's answer.
    let doc = app.get("/openapi.json").await.json();
    let schemas = &doc["components"]["schemas"];
    for name in ["AnswerReceipt", "AnswerView", "AnsweredRow", "AckError"] {
        assert!(schemas[name].is_object(), "{name} in the OpenAPI document");
    }
    assert!(schemas["OutboxEntry"]["properties"]["answer"].is_object());
    let params = doc["paths"]["/v1/outbox"]["get"]["parameters"].to_string();
    assert!(params.contains("\"answer\""), "{params}");
}

mod over_http {
    #[tokio::test]
    async fn sqlite() {
        super::answers_over_http(super::Backend::Sqlite).await;
    }

    #[tokio::test]
    async fn postgres() {
        super::answers_over_http(super::Backend::Postgres).await;
    }
}

/// The same over the partners' AMQP queues: each answers what it took from `ects.out` on
/// its inbound queue; an answer naming another partner's message, or nothing, goes to the
/// dead-letter queue with 404 and is kept as a rejected message.
async fn answers_over_amqp(backend: Backend) {
    use crate::amqp::{Listener, connect, partner, publish, suffix};
    let Some(url) = crate::amqp::amqp_url() else {
        return;
    };
    let s = suffix();
    let (ice, wco) = (format!("in-{s}"), format!("sv-{s}"));
    let queue = |p: &str| format!("ects.test.in.{p}");
    let partners = vec![
        partner(&format!(
            "id = \"{ice}\"\nauthority = \"SV\"\nformat = \"icegate-csn\"\namqp_in = \"{}\"\nsubscribe = [\"status\"]\n",
            queue(&ice)
        )),
        partner(&format!(
            "id = \"{wco}\"\nauthority = \"SV\"\nformat = \"wco-dm\"\namqp_in = \"{}\"\nsubscribe = [\"status\"]\n",
            queue(&wco)
        )),
    ];
    let mut listener = Listener::on_exchange(&url, &[format!("{ice}.#"), format!("{wco}.#")]).await;
    let mut dlq = Listener::on_queue(&url, &format!("{}.dlq", queue(&wco))).await;
    let Some(app) = crate::amqp::spawn(backend, &url, partners).await else {
        return;
    };
    let mut seq = Seq(0);
    rolling(&app, &mut seq).await;
    listener
        .until("two status messages to each partner", |seen| {
            [&ice, &wco].iter().all(|p| {
                seen.iter()
                    .filter(|r| r.routing_key.starts_with(&format!("{p}.")))
                    .map(|r| r.message_id.clone())
                    .collect::<std::collections::BTreeSet<_>>()
                    .len()
                    >= 2
            })
        })
        .await;
    let first = |p: &str| listener.for_partner(p)[0].clone();
    let (to_ice, to_wco) = (first(&ice), first(&wco));
    let ice_ref = icegate_reference(&to_ice.body);
    let wco_ref = wco_reference(&to_wco.body);
    assert_eq!(ice_ref, to_ice.message_id.replace('-', ""));
    assert_eq!(wco_ref, to_wco.message_id.replace('-', ""));

    let (_conn, channel) = connect(&url).await;
    publish(&channel, &queue(&ice), &ack("58", &ice_ref), Some("ack-1")).await;
    publish(
        &channel,
        &queue(&wco),
        &dms("03_DMSREJ", &wco_ref),
        Some("dms-1"),
    )
    .await;
    // Naming the other partner's message, and naming nothing: dead-lettered.
    publish(
        &channel,
        &queue(&wco),
        &dms("01_DMSACC", &ice_ref),
        Some("dms-2"),
    )
    .await;
    publish(
        &channel,
        &queue(&wco),
        &dms("01_DMSACC", "no-such-message"),
        Some("dms-3"),
    )
    .await;
    // Redelivered under its id: not stored twice.
    publish(&channel, &queue(&ice), &ack("58", &ice_ref), Some("ack-1")).await;
    publish(&channel, &queue(&ice), &ack("57", &ice_ref), Some("ack-2")).await;

    let answered = crate::helpers::eventually("both answers on their rows", || async {
        let rows = outbox_as(&app, None, "answer=accepted").await;
        let rejected = outbox_as(&app, None, "answer=rejected").await;
        let n = |v: &Value| v["messages"].as_array().unwrap().len();
        if n(&rows) == 1 && n(&rejected) == 1 {
            Ok((rows, rejected))
        } else {
            Err(format!("accepted {rows}, rejected {rejected}"))
        }
    })
    .await;
    let (accepted, rejected) = answered;
    let a = &accepted["messages"][0];
    assert_eq!(a["message_id"], to_ice.message_id.as_str());
    assert_eq!(
        a["answer"]["answers"], 2,
        "the redelivery is not a third: {a}"
    );
    assert_eq!(a["answer"]["reference"], "2000451");
    let r = &rejected["messages"][0];
    assert_eq!(r["message_id"], to_wco.message_id.as_str());
    assert!(
        r["answer"]["reason"].as_str().unwrap().contains("CDS12005"),
        "{r}"
    );

    dlq.until("two dead-lettered answers", |seen| seen.len() >= 2)
        .await;
    for dead in &dlq.seen {
        assert_eq!(dead.headers["x-ects-status"], "404", "{:?}", dead.headers);
        assert!(
            dead.headers["x-ects-reason"].contains(&format!("partner {wco}")),
            "{:?}",
            dead.headers
        );
    }
    assert_eq!(
        app.count_where("messages", "format = 'wco-dms' and outcome = 'rejected'")
            .await,
        2
    );
}

mod over_amqp {
    #[tokio::test]
    async fn sqlite() {
        super::answers_over_amqp(super::Backend::Sqlite).await;
    }

    #[tokio::test]
    async fn postgres() {
        super::answers_over_amqp(super::Backend::Postgres).await;
    }
}
