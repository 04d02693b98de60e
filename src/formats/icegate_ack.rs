//! ICEGATE's replies to a filed SCMTR message. An `_ACK.json` carries, for every object of
//! the message it answers, an array `<object>ErrorCode` of `{pathName, errorCode,
//! errorMessage}` (`000` = accepted), the CSN number and date customs gave it, and per
//! consignment line the cargo identification number (`mcResponse.mcinPcin`). It is read
//! here into the outcome of the delivery it answers, for the outbound message store.

use serde::Serialize;
use serde_json::Value;

use crate::problem::{DocumentError, Located};

/// The message an ACK answers, as ICEGATE echoes it (with the file name, `F_SACHM22_
/// <event>_<sender>_<jobNo>_<date>`, these identify one filing).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct AnsweredMessage {
    pub sender: String,
    pub message_id: String,
    pub reporting_event: String,
    pub port: String,
    pub job_no: String,
    pub job_date: String,
    pub control_number: String,
}

/// One object's verdict that is not "accepted".
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct AckError {
    /// ICEGATE's path of the object (`/master/mastrCnsgmtDec/trnsprtEqmt`).
    pub path: String,
    pub code: String,
    pub message: String,
}

/// What a partner's reply says of a message the gateway sent.
#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
pub struct DeliveryOutcome {
    pub answers: AnsweredMessage,
    /// Every object the reply judged was accepted (`000`).
    pub accepted: bool,
    /// How many verdicts the reply holds.
    pub verdicts: usize,
    pub errors: Vec<AckError>,
    /// The CSN number and date customs assigned.
    pub csn_no: Option<String>,
    pub csn_date: Option<String>,
    /// Cargo identification numbers per consignment line (`PCIN:20PC...`).
    pub cargo_ids: Vec<String>,
}

/// The code ICEGATE uses for an accepted object.
pub const ACCEPTED: &str = "000";

fn text(v: Option<&Value>) -> String {
    match v {
        Some(Value::String(s)) => s.clone(),
        Some(Value::Number(n)) => n.to_string(),
        _ => String::new(),
    }
}

/// Reads an `_ACK.json`. A document without a header, or without a single verdict, is not
/// an ACK.
pub fn parse_ack(body: &[u8]) -> Result<DeliveryOutcome, DocumentError> {
    let value: Value = serde_json::from_slice(body)
        .map_err(|e| DocumentError::malformed(Located::json_syntax(body, &e)))?;
    let header = value
        .get("headerField")
        .filter(|h| h.is_object())
        .ok_or_else(|| {
            DocumentError::Invalid(vec![Located::pointer(
                "/headerField",
                "an ICEGATE ACK starts with its headerField",
            )])
        })?;
    let dec_ref = value.pointer("/master/decRef");
    let answers = AnsweredMessage {
        sender: text(header.get("senderID")),
        message_id: text(header.get("messageID")),
        reporting_event: text(header.get("reportingEvent")),
        port: text(dec_ref.and_then(|d| d.get("prtofRptng"))),
        job_no: text(dec_ref.and_then(|d| d.get("jobNo"))),
        job_date: text(dec_ref.and_then(|d| d.get("jobDt"))),
        control_number: text(header.get("sequenceOrControlNumber")),
    };
    let mut verdicts = 0;
    let mut errors = Vec::new();
    let mut cargo_ids = Vec::new();
    walk(&value, "", &mut verdicts, &mut errors, &mut cargo_ids, 0);
    if verdicts == 0 {
        return Err(DocumentError::Invalid(vec![Located::pointer(
            "/master",
            "the ACK holds no verdict (no *ErrorCode array of {pathName, errorCode, errorMessage})",
        )]));
    }
    let field = |name: &str| {
        dec_ref
            .and_then(|d| d.get(name))
            .map(|v| text(Some(v)))
            .filter(|s| !s.is_empty())
    };
    Ok(DeliveryOutcome {
        answers,
        accepted: errors.is_empty(),
        verdicts,
        errors,
        csn_no: field("csn_no"),
        csn_date: field("csn_dt"),
        cargo_ids,
    })
}

/// Deepest nesting read; an ACK is a few levels deep.
const MAX_DEPTH: usize = 16;

fn walk(
    value: &Value,
    at: &str,
    verdicts: &mut usize,
    errors: &mut Vec<AckError>,
    cargo_ids: &mut Vec<String>,
    depth: usize,
) {
    if depth > MAX_DEPTH {
        // Deeper than any ACK: not silently taken as accepted.
        errors.push(AckError {
            path: at.to_owned(),
            code: String::new(),
            message: format!("nested deeper than {MAX_DEPTH} levels: not read"),
        });
        return;
    }
    match value {
        Value::Object(map) => {
            for (key, child) in map {
                let here = format!("{at}/{key}");
                if key.ends_with("ErrorCode")
                    && let Value::Array(items) = child
                {
                    for item in items {
                        *verdicts += 1;
                        // Several codes may come joined (`02|05`); any but 000 is an error.
                        let code = text(item.get("errorCode"));
                        if code.split('|').any(|c| c.trim() != ACCEPTED) {
                            errors.push(AckError {
                                path: Some(text(item.get("pathName")))
                                    .filter(|p| !p.is_empty())
                                    .unwrap_or_else(|| here.clone()),
                                code,
                                message: text(item.get("errorMessage")),
                            });
                        }
                    }
                } else if key == "mcResponse" {
                    let responses = match child {
                        Value::Array(items) => items.iter().collect(),
                        other => vec![other],
                    };
                    for response in responses {
                        let id = text(response.get("mcinPcin"));
                        if !id.is_empty() {
                            let kind = text(response.get("cinTyp"));
                            cargo_ids.push(if kind.is_empty() {
                                id
                            } else {
                                format!("{kind}:{id}")
                            });
                        }
                    }
                } else {
                    walk(child, &here, verdicts, errors, cargo_ids, depth + 1);
                }
            }
        }
        Value::Array(items) => {
            for (i, item) in items.iter().enumerate() {
                walk(
                    item,
                    &format!("{at}/{i}"),
                    verdicts,
                    errors,
                    cargo_ids,
                    depth + 1,
                );
            }
        }
        _ => {}
    }
}
