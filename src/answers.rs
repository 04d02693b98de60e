//! Partners' answers to what the gateway sent them: an ICEGATE ACK (JSON) or a WCO DMS
//! notification (XML `MetaData` holding a `Response`: DMSACC, function code 01, or DMSREJ,
//! 03). Each names the outbox message it answers by our reference, which every outbound
//! notification carries (`crate::outbox::write`):
//!
//! | format        | where we write it                          | where the answer names it                 |
//! |---------------|--------------------------------------------|-------------------------------------------|
//! | `icegate-csn` | `headerField/sequenceOrControlNumber`      | `headerField/sequenceOrControlNumber`     |
//! | `wco-dm`      | `Response/FunctionalReferenceID`           | `Response/Declaration/FunctionalReferenceID` |
//! | `ects-json`   | `reference`                                | (no answer format)                        |
//!
//! The reference is the outbox row's `message_id` in its 32-hex-digit form (a WCO
//! functional reference takes 35 characters). Reading here is pure; storing is
//! `crate::ingest::Ingest::answer`.

use serde::Serialize;

use crate::formats::icegate_ack::{self, AckError};
use crate::mapping::tree::{Node, parse_xml, xml_root_name};
use crate::problem::{DocumentError, Located};

/// Most errors kept of one answer; the rest are counted in `reason`.
pub const MAX_ERRORS: usize = 50;
/// Longest text kept of one error field, reason or reference.
pub const MAX_TEXT: usize = 512;
/// Most further ids (cargo ids) kept of one answer.
pub const MAX_IDS: usize = 50;

/// The answer formats, as stored and as `POST /v1/messages/{format}` names them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AnswerFormat {
    IcegateAck,
    WcoDms,
}

impl AnswerFormat {
    pub fn id(self) -> &'static str {
        match self {
            AnswerFormat::IcegateAck => "icegate-ack",
            AnswerFormat::WcoDms => "wco-dms",
        }
    }

    pub fn from_id(id: &str) -> Option<Self> {
        match id {
            "icegate-ack" => Some(AnswerFormat::IcegateAck),
            "wco-dms" => Some(AnswerFormat::WcoDms),
            _ => None,
        }
    }

    /// Where the answer names the message it answers (for problems).
    pub fn reference_at(self) -> &'static str {
        match self {
            AnswerFormat::IcegateAck => "/headerField/sequenceOrControlNumber",
            AnswerFormat::WcoDms => "/MetaData/Response/Declaration/FunctionalReferenceID",
        }
    }
}

/// What a partner answered, read.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PartnerAnswer {
    pub format: &'static str,
    /// Our reference of the message it answers, as the answer gives it.
    pub answers: String,
    pub accepted: bool,
    /// In words, when refused (and a count of errors not kept).
    pub reason: Option<String>,
    pub errors: Vec<AckError>,
    /// The partner's own reference: the CSN number, the WCO functional reference id.
    pub reference: Option<String>,
    /// Further ids it gave: cargo ids (`PCIN:...`), the declaration id (`MRN:...`).
    pub ids: Vec<String>,
}

/// A body that looks like an answer: `Some(format)`. Cheap: no full parse of anything
/// that is not one.
pub fn detect(body: &[u8]) -> Option<AnswerFormat> {
    match body.iter().find(|b| !b.is_ascii_whitespace()) {
        Some(b'{') => {
            // An ACK's verdicts are `*ErrorCode` arrays next to a headerField; a CSN
            // (the same envelope) has none.
            let has = |needle: &[u8]| body.windows(needle.len()).any(|w| w == needle);
            (has(b"\"headerField\"") && has(b"ErrorCode\"")).then_some(AnswerFormat::IcegateAck)
        }
        Some(b'<') => {
            let root = xml_root_name(body)?;
            (local(&root) == "MetaData" && has_response_child(body)).then_some(AnswerFormat::WcoDms)
        }
        _ => None,
    }
}

/// Whether the document's root has a `Response` child (a DEC has a `Declaration`).
fn has_response_child(body: &[u8]) -> bool {
    use quick_xml::events::Event;
    let Ok(text) = std::str::from_utf8(body) else {
        return false;
    };
    let mut reader = quick_xml::reader::Reader::from_str(text);
    let mut depth = 0usize;
    loop {
        match reader.read_event() {
            Ok(Event::Start(e)) => {
                if depth == 1 && e.local_name().into_inner() == "Response" {
                    return true;
                }
                depth += 1;
            }
            Ok(Event::Empty(e)) => {
                if depth == 1 && e.local_name().into_inner() == "Response" {
                    return true;
                }
            }
            Ok(Event::End(_)) => {
                depth = depth.saturating_sub(1);
                if depth == 0 {
                    return false;
                }
            }
            Ok(Event::Eof) | Err(_) => return false,
            Ok(_) => {}
        }
    }
}

fn local(clark: &str) -> &str {
    clark.rsplit_once('}').map_or(clark, |(_, l)| l)
}

fn clip(s: &str) -> String {
    if s.len() <= MAX_TEXT {
        return s.to_owned();
    }
    let mut cut = MAX_TEXT;
    while !s.is_char_boundary(cut) {
        cut -= 1;
    }
    format!("{}…", &s[..cut])
}

/// Reads an answer of the given format.
pub fn parse(format: AnswerFormat, body: &[u8]) -> Result<PartnerAnswer, DocumentError> {
    match format {
        AnswerFormat::IcegateAck => parse_icegate(body),
        AnswerFormat::WcoDms => parse_wco(body),
    }
}

fn reason_of(errors: &[AckError], total: usize) -> Option<String> {
    if total == 0 {
        return None;
    }
    let shown: Vec<String> = errors
        .iter()
        .take(3)
        .map(|e| {
            let mut s = String::new();
            if !e.code.is_empty() {
                s.push_str(&e.code);
                s.push(' ');
            }
            s.push_str(if e.message.is_empty() {
                "refused"
            } else {
                &e.message
            });
            if !e.path.is_empty() {
                s.push_str(" at ");
                s.push_str(&e.path);
            }
            s
        })
        .collect();
    let mut reason = shown.join("; ");
    if total > shown.len() {
        reason.push_str(&format!(" (and {} more)", total - shown.len()));
    }
    Some(clip(&reason))
}

fn capped(errors: Vec<AckError>) -> (Vec<AckError>, usize) {
    let total = errors.len();
    let kept = errors
        .into_iter()
        .take(MAX_ERRORS)
        .map(|e| AckError {
            path: clip(&e.path),
            code: clip(&e.code),
            message: clip(&e.message),
        })
        .collect();
    (kept, total)
}

fn parse_icegate(body: &[u8]) -> Result<PartnerAnswer, DocumentError> {
    let ack = icegate_ack::parse_ack(body)?;
    let answers = ack.answers.control_number.trim().to_owned();
    if answers.is_empty() {
        return Err(DocumentError::Invalid(vec![Located::pointer(
            AnswerFormat::IcegateAck.reference_at(),
            "the ACK does not name the message it answers (no sequenceOrControlNumber)",
        )]));
    }
    let (errors, total) = capped(ack.errors);
    Ok(PartnerAnswer {
        format: AnswerFormat::IcegateAck.id(),
        answers: clip(&answers),
        accepted: ack.accepted,
        reason: reason_of(&errors, total),
        errors,
        reference: ack.csn_no.map(|c| clip(&c)),
        ids: ack
            .cargo_ids
            .iter()
            .take(MAX_IDS)
            .map(|c| clip(c))
            .collect(),
    })
}

fn child<'a>(node: &'a Node, name: &str) -> Option<&'a Node> {
    node.children.iter().find(|c| local(&c.name) == name)
}

fn text_of(node: Option<&Node>) -> Option<String> {
    node.and_then(|n| n.text.as_deref())
        .map(str::trim)
        .filter(|t| !t.is_empty())
        .map(str::to_owned)
}

/// DMS function codes this reads: accepted, rejected.
const DMS_ACCEPTED: &str = "01";
const DMS_REJECTED: &str = "03";

fn parse_wco(body: &[u8]) -> Result<PartnerAnswer, DocumentError> {
    let root = parse_xml(body)?;
    let at = |p: &str| Located::pointer(p, "");
    let invalid = |pointer: &str, detail: String| {
        DocumentError::Invalid(vec![Located {
            detail,
            ..at(pointer)
        }])
    };
    if local(&root.name) != "MetaData" {
        return Err(invalid(
            "/",
            format!(
                "a WCO DMS notification has root MetaData, not {}",
                local(&root.name)
            ),
        ));
    }
    let response = child(&root, "Response").ok_or_else(|| {
        invalid(
            "/MetaData/Response",
            "a WCO DMS notification holds a Response".into(),
        )
    })?;
    let function = text_of(child(response, "FunctionCode")).unwrap_or_default();
    let accepted = match function.as_str() {
        DMS_ACCEPTED => true,
        DMS_REJECTED => false,
        other => {
            return Err(invalid(
                "/MetaData/Response/FunctionCode",
                format!(
                    "function code {other:?} is neither an acceptance (01, DMSACC) nor a rejection (03, DMSREJ)"
                ),
            ));
        }
    };
    let declaration = child(response, "Declaration");
    let answers = text_of(declaration.and_then(|d| child(d, "FunctionalReferenceID")))
        .ok_or_else(|| {
            invalid(
                AnswerFormat::WcoDms.reference_at(),
                "the notification does not name the message it answers (no Declaration/FunctionalReferenceID)".into(),
            )
        })?;
    let mut errors = Vec::new();
    for (i, error) in response
        .children
        .iter()
        .filter(|c| local(&c.name) == "Error")
        .enumerate()
    {
        let pointers: Vec<String> = error
            .children
            .iter()
            .filter(|c| local(&c.name) == "Pointer")
            .map(|p| {
                p.children
                    .iter()
                    .filter_map(|c| text_of(Some(c)))
                    .collect::<Vec<_>>()
                    .join("/")
            })
            .collect();
        errors.push(AckError {
            path: if pointers.is_empty() {
                format!("/MetaData/Response/Error/{i}")
            } else {
                pointers.join("/")
            },
            code: text_of(child(error, "ValidationCode")).unwrap_or_default(),
            message: text_of(child(error, "Description")).unwrap_or_default(),
        });
    }
    if !accepted && errors.is_empty() {
        errors.push(AckError {
            path: "/MetaData/Response".into(),
            code: DMS_REJECTED.into(),
            message: "rejected (DMSREJ) without an Error".into(),
        });
    }
    let (errors, total) = capped(errors);
    let mut ids = Vec::new();
    if let Some(id) = text_of(declaration.and_then(|d| child(d, "ID"))) {
        ids.push(clip(&format!("MRN:{id}")));
    }
    Ok(PartnerAnswer {
        format: AnswerFormat::WcoDms.id(),
        answers: clip(&answers),
        accepted,
        reason: if accepted {
            None
        } else {
            reason_of(&errors, total).map(|r| clip(&format!("rejected (DMSREJ): {r}")))
        },
        errors,
        reference: text_of(child(response, "FunctionalReferenceID")).map(|r| clip(&r)),
        ids,
    })
}

/// Our reference of an outbox message: its message id in 32 hex digits.
pub fn reference_of(message_id: &str) -> String {
    uuid::Uuid::parse_str(message_id)
        .map(|u| u.simple().to_string())
        .unwrap_or_else(|_| message_id.to_owned())
}

/// The outbox message id an answer's reference names, when it can name one.
pub fn message_id_of(reference: &str) -> Option<String> {
    uuid::Uuid::parse_str(reference.trim())
        .ok()
        .map(|u| u.hyphenated().to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn references_round_trip() {
        let id = "0190b8a4-3c2e-5d7f-9a1b-2c3d4e5f6a7b";
        let r = reference_of(id);
        assert_eq!(r.len(), 32);
        assert_eq!(message_id_of(&r).as_deref(), Some(id));
        assert_eq!(message_id_of("58"), None);
    }

    #[test]
    fn detection_tells_answers_from_filings() {
        assert_eq!(
            detect(br#"{"headerField": {}, "master": {"decRefErrorCode": []}}"#),
            Some(AnswerFormat::IcegateAck)
        );
        assert_eq!(detect(br#"{"headerField": {}, "master": {}}"#), None);
        assert_eq!(
            detect(b"<MetaData><WCOTypeName>RES</WCOTypeName><Response/></MetaData>"),
            Some(AnswerFormat::WcoDms)
        );
        assert_eq!(
            detect(b"<MetaData><Declaration><Response/></Declaration></MetaData>"),
            None
        );
        assert_eq!(detect(b"<MetaData"), None);
    }
}
