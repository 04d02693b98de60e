//! A trip's state machine: a pure function of the declaration and the seal events applied
//! to it, with the time always passed in. The gateway stores what it returns.
//!
//! This first version arms a trip when its seals report locked, tracks seal states and the
//! last position, and raises `seal_opened`, `seal_tamper` and `low_battery`. Geofence
//! rules (deviation, stops, arrival), release and custody handover build on it.

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::ids::{AlertId, SealId, TripId};
use crate::model::{
    Alert, AlertKind, EquipmentStatus, LastPosition, SealEvent, SealEventKind, SealKind, SealState,
    SealStatus, Severity, Timestamp, TransitDeclaration, TripState, TripStatus,
};

/// Thresholds a corridor or trip may override.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Rules {
    /// At or below this battery level a `low_battery` alert is raised.
    pub low_battery_pct: u8,
    /// The alert clears only once the level is this much above the threshold again, so a
    /// reading that wobbles around the threshold does not raise and clear in turn.
    pub low_battery_hysteresis_pct: u8,
}

impl Default for Rules {
    fn default() -> Self {
        Self {
            low_battery_pct: 20,
            low_battery_hysteresis_pct: 5,
        }
    }
}

/// What applying an input changed; the gateway persists and delivers these.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "effect", rename_all = "snake_case")]
pub enum Effect {
    StateChanged {
        from: TripState,
        to: TripState,
        at: Timestamp,
    },
    AlertRaised {
        alert: Alert,
    },
    AlertUpdated {
        alert: Alert,
    },
    AlertCleared {
        alert: Alert,
    },
}

/// A trip with its full alert history (open and cleared).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Trip {
    pub status: TripStatus,
    pub alerts: Vec<Alert>,
}

impl Trip {
    /// A new trip for a declaration, in state `declared`, in the issuing authority's custody.
    pub fn declare(trip_id: TripId, declaration: &TransitDeclaration, now: Timestamp) -> Self {
        let equipment = declaration
            .equipment
            .iter()
            .map(|e| EquipmentStatus {
                id: e.id.clone(),
                seals: e
                    .seals
                    .iter()
                    .map(|s| SealStatus {
                        id: s.id.clone(),
                        kind: s.kind,
                        device_id: s.device_id.clone(),
                        state: SealState::Unknown,
                        battery_pct: None,
                        last_event_at: None,
                    })
                    .collect(),
            })
            .collect();
        Self {
            status: TripStatus {
                trip_id,
                declaration_id: declaration.declaration_id.clone(),
                issuing_authority: declaration.issuing_authority.clone(),
                state: TripState::Declared,
                custodian: declaration.issuing_authority.clone(),
                corridor_id: declaration.corridor_id.clone(),
                office_of_departure: declaration.office_of_departure.code.clone(),
                office_of_destination: declaration.office_of_destination.code.clone(),
                time_limit: declaration.time_limit,
                equipment,
                last_position: None,
                open_alerts: Vec::new(),
                custody_chain: Vec::new(),
                created_at: now,
                updated_at: now,
            },
            alerts: Vec::new(),
        }
    }

    /// Whether this trip's seals include the event's seal (by seal id, else by device).
    pub fn has_seal_for(&self, event: &SealEvent) -> bool {
        self.find_seal(event).is_some()
    }

    fn find_seal(&self, event: &SealEvent) -> Option<(usize, usize)> {
        for (e, equipment) in self.status.equipment.iter().enumerate() {
            for (s, seal) in equipment.seals.iter().enumerate() {
                let matches = match &event.seal_id {
                    Some(id) => &seal.id == id,
                    None => seal.device_id.as_ref() == Some(&event.device_id),
                };
                if matches {
                    return Some((e, s));
                }
            }
        }
        None
    }

    /// Applies one seal event. Events for a trip in a final state, or for a seal the trip
    /// does not carry, change nothing.
    pub fn apply_event(&mut self, event: &SealEvent, rules: &Rules, now: Timestamp) -> Vec<Effect> {
        let mut effects = Vec::new();
        if self.status.state.is_final() {
            return effects;
        }
        let Some((e, s)) = self.find_seal(event) else {
            return effects;
        };
        let evidence = event
            .identity()
            .unwrap_or_else(|| format!("{}@{}", event.device_id, event.time.to_rfc3339()));
        let seal_id = self.status.equipment[e].seals[s].id.clone();

        {
            let seal = &mut self.status.equipment[e].seals[s];
            let newest = seal.last_event_at.is_none_or(|t| event.time >= t);
            if newest {
                seal.last_event_at = Some(event.time);
                if event.battery_pct.is_some() {
                    seal.battery_pct = event.battery_pct;
                }
            }
            if let Some(state) = seal_state_after(event.kind) {
                seal.state = state;
            }
        }

        if let Some(position) = event.position.filter(|p| p.is_valid_fix()) {
            let newer = self
                .status
                .last_position
                .as_ref()
                .is_none_or(|last| event.time > last.time);
            if newer {
                self.status.last_position = Some(LastPosition {
                    lat: position.lat,
                    lon: position.lon,
                    time: event.time,
                    speed_kmh: position.speed_kmh,
                    device_id: Some(event.device_id.clone()),
                });
            }
        }

        let point = event.position.map(|p| p.point());
        let watched = matches!(
            self.status.state,
            TripState::Armed | TripState::InTransit | TripState::Arrived
        );
        match event.kind {
            SealEventKind::Locked
                if self.status.state == TripState::Declared
                    && self.all_electronic_seals_locked() =>
            {
                effects.push(self.change_state(TripState::Armed, event.time));
            }
            SealEventKind::Unlocked | SealEventKind::Opened if watched => {
                // No release authorization exists yet in this version, so every opening of
                // an armed seal is unauthorized.
                self.raise_or_extend(
                    &mut effects,
                    AlertKind::SealOpened,
                    Severity::High,
                    &seal_id,
                    &evidence,
                    event,
                    point,
                    format!("seal {seal_id} reported {}", event.kind.as_str()),
                );
            }
            kind if kind.is_tamper() => {
                self.raise_or_extend(
                    &mut effects,
                    AlertKind::SealTamper,
                    Severity::Critical,
                    &seal_id,
                    &evidence,
                    event,
                    point,
                    format!("seal {seal_id} reported {}", kind.as_str()),
                );
            }
            _ => {}
        }

        let battery_low = event.kind == SealEventKind::LowBattery
            || event
                .battery_pct
                .is_some_and(|b| b <= rules.low_battery_pct);
        let recovered = event.battery_pct.is_some_and(|b| {
            u16::from(b)
                > u16::from(rules.low_battery_pct) + u16::from(rules.low_battery_hysteresis_pct)
        });
        if battery_low {
            self.raise_or_extend(
                &mut effects,
                AlertKind::LowBattery,
                Severity::Medium,
                &seal_id,
                &evidence,
                event,
                point,
                format!(
                    "seal {seal_id} battery at {}",
                    event
                        .battery_pct
                        .map_or("a low level".to_owned(), |b| format!("{b}%"))
                ),
            );
        } else if recovered
            && let Some(alert) = self.open_alert_mut(AlertKind::LowBattery, &seal_id)
        {
            alert.cleared_at = Some(event.time);
            alert.evidence.push(evidence.clone());
            effects.push(Effect::AlertCleared {
                alert: alert.clone(),
            });
        }

        self.refresh_open_alerts();
        self.status.updated_at = now;
        effects
    }

    fn all_electronic_seals_locked(&self) -> bool {
        let mut electronic = self
            .status
            .equipment
            .iter()
            .flat_map(|e| e.seals.iter())
            .filter(|s| s.kind == SealKind::Electronic)
            .peekable();
        electronic.peek().is_some() && electronic.all(|s| s.state == SealState::Locked)
    }

    fn change_state(&mut self, to: TripState, at: Timestamp) -> Effect {
        let from = self.status.state;
        self.status.state = to;
        Effect::StateChanged { from, to, at }
    }

    fn open_alert_mut(&mut self, kind: AlertKind, seal_id: &SealId) -> Option<&mut Alert> {
        self.alerts.iter_mut().find(|a| {
            a.kind == kind && a.cleared_at.is_none() && a.seal_id.as_ref() == Some(seal_id)
        })
    }

    /// One open alert per rule and seal: a repeat adds its event to the evidence.
    #[allow(clippy::too_many_arguments)]
    fn raise_or_extend(
        &mut self,
        effects: &mut Vec<Effect>,
        kind: AlertKind,
        severity: Severity,
        seal_id: &SealId,
        evidence: &str,
        event: &SealEvent,
        point: Option<crate::model::LatLon>,
        detail: String,
    ) {
        let trip_id = self.status.trip_id;
        if let Some(alert) = self.open_alert_mut(kind, seal_id) {
            if !alert.evidence.iter().any(|e| e == evidence) {
                alert.evidence.push(evidence.to_owned());
                effects.push(Effect::AlertUpdated {
                    alert: alert.clone(),
                });
            }
            return;
        }
        let name = format!("{}/{seal_id}/{evidence}", kind.as_str());
        let alert = Alert {
            alert_id: AlertId(Uuid::new_v5(&trip_id.0, name.as_bytes())),
            trip_id,
            kind,
            severity,
            raised_at: event.time,
            cleared_at: None,
            position: point,
            evidence: vec![evidence.to_owned()],
            seal_id: Some(seal_id.clone()),
            detail: Some(detail),
        };
        self.alerts.push(alert.clone());
        effects.push(Effect::AlertRaised { alert });
    }

    fn refresh_open_alerts(&mut self) {
        self.status.open_alerts = self
            .alerts
            .iter()
            .filter(|a| a.cleared_at.is_none())
            .map(Alert::as_ref)
            .collect();
    }
}

fn seal_state_after(kind: SealEventKind) -> Option<SealState> {
    match kind {
        SealEventKind::Locked => Some(SealState::Locked),
        SealEventKind::Unlocked => Some(SealState::Unlocked),
        SealEventKind::Opened => Some(SealState::Opened),
        k if k.is_tamper() => Some(SealState::Tampered),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn declaration() -> TransitDeclaration {
        serde_json::from_value(json!({
            "declaration_id": "GT-2026-T-000123",
            "issuing_authority": "GT",
            "declared_at": "2026-03-14T08:15:00Z",
            "office_of_departure": {"code": "GTPQZ", "country": "GT"},
            "office_of_destination": {"code": "SVSAL", "country": "SV"},
            "equipment": [
                {"id": "MSKU1234565", "seals": [
                    {"id": "ES00781234", "kind": "electronic", "device_id": "860000000000001"},
                    {"id": "BS1", "kind": "mechanical"}
                ]}
            ]
        }))
        .unwrap()
    }

    fn event(seq: u64, minute: u32, kind: &str, battery: u8) -> SealEvent {
        serde_json::from_value(json!({
            "device_id": "860000000000001", "seq": seq,
            "time": format!("2026-03-14T09:{minute:02}:00Z"), "kind": kind,
            "position": {"lat": 14.07, "lon": -90.81, "fix": "gps"},
            "battery_pct": battery
        }))
        .unwrap()
    }

    fn trip() -> Trip {
        let now = "2026-03-14T08:20:00Z".parse().unwrap();
        Trip::declare(TripId(Uuid::nil()), &declaration(), now)
    }

    #[test]
    fn locking_the_electronic_seals_arms_the_trip() {
        let mut trip = trip();
        let now = "2026-03-14T09:00:00Z".parse().unwrap();
        let effects = trip.apply_event(&event(1, 0, "locked", 90), &Rules::default(), now);
        assert_eq!(trip.status.state, TripState::Armed);
        assert!(matches!(
            effects[0],
            Effect::StateChanged {
                from: TripState::Declared,
                to: TripState::Armed,
                ..
            }
        ));
        assert_eq!(trip.status.equipment[0].seals[0].state, SealState::Locked);
        assert_eq!(trip.status.last_position.as_ref().unwrap().lat, 14.07);
    }

    #[test]
    fn opening_an_armed_seal_raises_one_alert_with_all_evidence() {
        let mut trip = trip();
        let now = "2026-03-14T10:00:00Z".parse().unwrap();
        let rules = Rules::default();
        trip.apply_event(&event(1, 0, "locked", 90), &rules, now);
        let first = trip.apply_event(&event(2, 5, "opened", 90), &rules, now);
        let second = trip.apply_event(&event(3, 6, "opened", 90), &rules, now);
        assert!(
            matches!(&first[0], Effect::AlertRaised { alert } if alert.kind == AlertKind::SealOpened)
        );
        assert!(matches!(&second[0], Effect::AlertUpdated { alert } if alert.evidence.len() == 2));
        assert_eq!(trip.status.open_alerts.len(), 1);
    }

    #[test]
    fn low_battery_clears_only_above_the_hysteresis() {
        let mut trip = trip();
        let now = "2026-03-14T10:00:00Z".parse().unwrap();
        let rules = Rules::default();
        trip.apply_event(&event(1, 0, "position", 19), &rules, now);
        assert_eq!(trip.status.open_alerts.len(), 1);
        trip.apply_event(&event(2, 1, "position", 24), &rules, now);
        assert_eq!(
            trip.status.open_alerts.len(),
            1,
            "24% is inside the hysteresis"
        );
        let effects = trip.apply_event(&event(3, 2, "position", 26), &rules, now);
        assert!(matches!(&effects[0], Effect::AlertCleared { .. }));
        assert!(trip.status.open_alerts.is_empty());
    }

    #[test]
    fn replay_gives_identical_state() {
        let rules = Rules::default();
        let now = "2026-03-14T10:00:00Z".parse().unwrap();
        let events = [
            event(1, 0, "locked", 90),
            event(2, 3, "rope_cut", 15),
            event(3, 4, "position", 80),
        ];
        let run = || {
            let mut t = trip();
            let effects: Vec<_> = events
                .iter()
                .flat_map(|e| t.apply_event(e, &rules, now))
                .collect();
            (
                serde_json::to_string(&t).unwrap(),
                serde_json::to_string(&effects).unwrap(),
            )
        };
        assert_eq!(run(), run());
    }
}
