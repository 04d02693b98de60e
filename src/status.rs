//! A trip's current status in a partner's format: the status notification of the moment
//! the trip entered its current state, written by the outbox's own writer, so that a
//! single window asking for it gets the document a subscribed partner was pushed.

use ects_core::{LatLon, NotificationKind, StatusNotification, TripStatus};
use sqlx::Row;
use uuid::Uuid;

use crate::formats::{Formats, Outbound};
use crate::mapping::MessageKind;
use crate::store::{Store, StoreError};

/// The canonical format: a trip status is its own JSON.
pub const CANONICAL: &str = "ects-json";

/// Status notifications looked at, newest first, to find the trip's latest state change.
const LOOKBACK: i64 = 20;

/// How a format says a trip's status, if it can.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StatusWriter {
    /// The canonical trip status (`ects-json`).
    Canonical,
    /// A mapping that writes the whole trip status (`trip_status`).
    TripStatus,
    /// A mapping that writes status notifications (`status_notification`).
    Notification,
}

/// How `format` writes a status, `None` when it cannot (or is not loaded).
pub fn writer(formats: &Formats, format: &str) -> Option<StatusWriter> {
    if format == CANONICAL {
        return Some(StatusWriter::Canonical);
    }
    let messages = formats.get(format)?.messages();
    if messages.contains(&(MessageKind::TripStatus, "out")) {
        Some(StatusWriter::TripStatus)
    } else if messages.contains(&(MessageKind::StatusNotification, "out")) {
        Some(StatusWriter::Notification)
    } else {
        None
    }
}

/// The formats that can say a trip's status.
pub fn capable(formats: &Formats) -> Vec<String> {
    formats
        .ids()
        .into_iter()
        .filter(|id| writer(formats, id).is_some())
        .collect()
}

/// The status notification of the trip's current state: the one the engine issued when
/// the trip entered it (kept in the audit chain with every effect), else, for a trip
/// still as declared, the same notification built from the declaration's moment.
pub async fn current_notification(
    store: &Store,
    status: &TripStatus,
) -> Result<StatusNotification, StoreError> {
    // No trip enters `declared` by a change: nothing to look for.
    if status.state == ects_core::TripState::Declared {
        return Ok(as_declared(status));
    }
    let rows = sqlx::query(
        "select payload from audit_log
         where trip_id = $1 and action = 'effect.notify' and payload like $2
         order by seq desc limit $3",
    )
    .bind(status.trip_id.to_string())
    .bind("%\"kind\":\"status\"%")
    .bind(LOOKBACK)
    .fetch_all(store.pool())
    .await?;
    for row in rows {
        let payload: String = row.try_get("payload")?;
        let Ok(effect) = serde_json::from_str::<NotifyEffect>(&payload) else {
            continue;
        };
        let note = effect.notification;
        if note.kind == NotificationKind::Status && note.state == status.state {
            return Ok(note);
        }
    }
    Ok(as_declared(status))
}

#[derive(serde::Deserialize)]
struct NotifyEffect {
    notification: StatusNotification,
}

/// A notification of the trip's state at its creation, named as the engine names status
/// notifications (`status/<state>/<time>`).
fn as_declared(status: &TripStatus) -> StatusNotification {
    let name = format!(
        "status/{}/{}",
        status.state.as_str(),
        status.created_at.to_rfc3339()
    );
    StatusNotification {
        notification_id: Uuid::new_v5(&status.trip_id.0, name.as_bytes()).to_string(),
        kind: NotificationKind::Status,
        trip_id: status.trip_id,
        declaration_id: status.declaration_id.clone(),
        issuing_authority: status.issuing_authority.clone(),
        state: status.state,
        time: status.created_at,
        previous_state: None,
        alert: None,
        release: None,
        handover: None,
        position: status.last_position.as_ref().map(|p| LatLon {
            lat: p.lat,
            lon: p.lon,
        }),
        late: false,
    }
}

/// A written status document.
#[derive(Debug)]
pub struct Rendered {
    pub body: Vec<u8>,
    pub content_type: String,
}

/// Why a status could not be written in a format.
#[derive(Debug, thiserror::Error)]
pub enum RenderError {
    /// The format has no way to say a status.
    #[error("format {0} cannot express a trip status")]
    NoWriter(String),
    /// It has, but not this one (no code for the state, ...).
    #[error("format {format} cannot express this trip's status: {reason}")]
    Refused { format: String, reason: String },
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// The trip's status in `format`.
pub async fn render(
    store: &Store,
    formats: &Formats,
    format: &str,
    status: &TripStatus,
) -> Result<Rendered, RenderError> {
    let refused = |reason: String| RenderError::Refused {
        format: format.to_owned(),
        reason,
    };
    match writer(formats, format) {
        None => Err(RenderError::NoWriter(format.to_owned())),
        Some(StatusWriter::Canonical) => Ok(Rendered {
            body: serde_json::to_vec(status).unwrap_or_default(),
            content_type: "application/json".into(),
        }),
        Some(StatusWriter::TripStatus) => {
            let adapter = formats
                .get(format)
                .ok_or_else(|| RenderError::NoWriter(format.to_owned()))?;
            let encoded = adapter
                .encode(&Outbound::TripStatus(status))
                .map_err(|e| refused(e.to_string()))?;
            Ok(Rendered {
                body: encoded.body,
                content_type: encoded.content_type.into(),
            })
        }
        Some(StatusWriter::Notification) => {
            let note = current_notification(store, status).await?;
            // Through the outbox's writer, from the canonical JSON it stores.
            let canonical = serde_json::to_string(&note).unwrap_or_default();
            let formats = formats.clone();
            let format_id = format.to_owned();
            let written = tokio::task::spawn_blocking(move || {
                crate::outbox::write(&formats, &format_id, &canonical, None)
            })
            .await
            .map_err(|e| refused(format!("writing stopped: {e}")))?
            .map_err(refused)?;
            Ok(Rendered {
                body: written.body,
                content_type: written.content_type,
            })
        }
    }
}

/// What an `Accept` header asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Wanted {
    /// A format by id (`format` parameter, or `application/vnd.ects.<id>+xml|json`).
    Format(String),
    /// The canonical JSON (`application/json`, `*/*`, no header).
    Canonical,
    /// Nothing the gateway writes (e.g. `application/xml` without a format).
    Unsatisfiable,
}

/// Most media ranges read from one `Accept` header.
const MAX_MEDIA_RANGES: usize = 32;

/// Reads an `Accept` header: the first media range (highest `q` first) that names a
/// format or the canonical JSON.
pub fn negotiate(accept: Option<&str>) -> Wanted {
    let Some(accept) = accept.map(str::trim).filter(|a| !a.is_empty()) else {
        return Wanted::Canonical;
    };
    let mut ranges: Vec<(u16, usize, Wanted)> = Vec::new();
    for (i, range) in accept.split(',').take(MAX_MEDIA_RANGES).enumerate() {
        let mut parts = range.split(';');
        let media = parts.next().unwrap_or_default().trim().to_ascii_lowercase();
        let mut q = 1000u16;
        let mut format = None;
        for param in parts {
            let Some((name, value)) = param.split_once('=') else {
                continue;
            };
            let value = value.trim().trim_matches('"');
            match name.trim().to_ascii_lowercase().as_str() {
                "q" => q = parse_q(value),
                "format" => format = Some(value.to_owned()),
                _ => {}
            }
        }
        if q == 0 {
            continue;
        }
        let vendor = media
            .strip_prefix("application/vnd.ects.")
            .map(|rest| {
                rest.strip_suffix("+xml")
                    .or_else(|| rest.strip_suffix("+json"))
                    .unwrap_or(rest)
                    .to_owned()
            })
            .filter(|id| !id.is_empty());
        let wanted = match (format, vendor, media.as_str()) {
            (Some(f), _, _) | (None, Some(f), _) => Wanted::Format(f),
            (None, None, "*/*" | "application/*" | "application/json") => Wanted::Canonical,
            _ => Wanted::Unsatisfiable,
        };
        ranges.push((q, i, wanted));
    }
    ranges.sort_by(|a, b| b.0.cmp(&a.0).then(a.1.cmp(&b.1)));
    ranges
        .into_iter()
        .map(|(_, _, w)| w)
        .find(|w| *w != Wanted::Unsatisfiable)
        .unwrap_or(Wanted::Unsatisfiable)
}

/// A quality value in thousandths (`0.5` → 500); anything unreadable counts as 1.
fn parse_q(value: &str) -> u16 {
    match value.parse::<f64>() {
        Ok(q) if (0.0..=1.0).contains(&q) => (q * 1000.0).round() as u16,
        _ => 1000,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accept_headers_name_a_format_the_canonical_json_or_nothing() {
        let f = |s: &str| Wanted::Format(s.into());
        assert_eq!(negotiate(None), Wanted::Canonical);
        assert_eq!(negotiate(Some("*/*")), Wanted::Canonical);
        assert_eq!(negotiate(Some("application/json")), Wanted::Canonical);
        assert_eq!(
            negotiate(Some("application/xml; format=wco-dm")),
            f("wco-dm")
        );
        assert_eq!(
            negotiate(Some("application/xml;format=\"duca-t\"")),
            f("duca-t")
        );
        assert_eq!(
            negotiate(Some("application/vnd.ects.asycuda+xml")),
            f("asycuda")
        );
        assert_eq!(
            negotiate(Some("application/vnd.ects.icegate-csn+json")),
            f("icegate-csn")
        );
        assert_eq!(negotiate(Some("application/xml")), Wanted::Unsatisfiable);
        assert_eq!(negotiate(Some("text/csv")), Wanted::Unsatisfiable);
        // Highest quality first; q=0 is "not this".
        assert_eq!(
            negotiate(Some(
                "application/json;q=0.5, application/xml;format=wco-dm"
            )),
            f("wco-dm")
        );
        assert_eq!(
            negotiate(Some("application/xml;format=wco-dm;q=0, application/json")),
            Wanted::Canonical
        );
        assert_eq!(
            negotiate(Some("application/xml, */*;q=0.1")),
            Wanted::Canonical
        );
    }
}
