//! An in-memory engine over many trips, for partners who embed the tracking engine and for
//! benchmarks. It routes seal events to trips by seal and device, keeps each trip's inputs
//! to replay late ones in event-time order, and ticks every trip. The gateway uses
//! [`Trip`] directly and keeps trips and inputs in its database instead.

use std::collections::HashMap;
use std::sync::Arc;

use crate::ids::{DeviceId, SealId, TripId};
use crate::model::{SealEvent, TransitDeclaration};
use crate::spatial::Geography;
use crate::trip::{CommandError, Effect, Input, Rules, Timestamp, Trip, reconcile};

struct Entry {
    trip: Trip,
    declaration: TransitDeclaration,
    inputs: Vec<Input>,
}

pub struct Engine {
    geography: Arc<Geography>,
    rules: Rules,
    keep_history: bool,
    trips: HashMap<TripId, Entry>,
    by_seal: HashMap<SealId, TripId>,
    by_device: HashMap<DeviceId, TripId>,
}

impl Engine {
    pub fn new(geography: Arc<Geography>, rules: Rules) -> Self {
        Self {
            geography,
            rules,
            keep_history: true,
            trips: HashMap::new(),
            by_seal: HashMap::new(),
            by_device: HashMap::new(),
        }
    }

    /// Without history, late events are applied as they come instead of replayed; memory
    /// per trip then stays constant.
    pub fn keep_history(mut self, keep: bool) -> Self {
        self.keep_history = keep;
        self
    }

    pub fn declare(&mut self, trip_id: TripId, declaration: TransitDeclaration, now: Timestamp) {
        for seal in declaration.seals() {
            self.by_seal.insert(seal.id.clone(), trip_id);
            if let Some(device) = &seal.device_id {
                self.by_device.insert(device.clone(), trip_id);
            }
        }
        let trip = Trip::declare(trip_id, &declaration, now);
        self.trips.insert(
            trip_id,
            Entry {
                trip,
                declaration,
                inputs: Vec::new(),
            },
        );
    }

    /// Sets thresholds for one trip (they win over its corridor's).
    pub fn set_trip_rules(&mut self, id: &TripId, rules: crate::trip::RulesOverride) -> bool {
        match self.trips.get_mut(id) {
            Some(entry) => {
                entry.trip.rules = rules;
                true
            }
            None => false,
        }
    }

    pub fn trip(&self, id: &TripId) -> Option<&Trip> {
        self.trips.get(id).map(|e| &e.trip)
    }

    pub fn trip_count(&self) -> usize {
        self.trips.len()
    }

    /// The trip a seal event belongs to: by its seal id, else its device.
    pub fn route(&self, event: &SealEvent) -> Option<TripId> {
        event
            .seal_id
            .as_ref()
            .and_then(|s| self.by_seal.get(s))
            .or_else(|| self.by_device.get(&event.device_id))
            .copied()
    }

    /// Applies an input to a trip. A seal event earlier than what the trip has seen is
    /// replayed in order (with history) and the difference returned as effects.
    pub fn apply(
        &mut self,
        trip_id: TripId,
        input: Input,
        now: Timestamp,
    ) -> Result<Vec<Effect>, CommandError> {
        let geo = self.geography.clone();
        let rules = self.rules;
        let keep = self.keep_history;
        let entry = self.trips.get_mut(&trip_id).ok_or_else(|| CommandError {
            field: "trip_id",
            reason: format!("no trip {trip_id}"),
        })?;
        let late = matches!(&input, Input::SealEvent(e) if entry.trip.is_late(e));
        if late && keep {
            entry.inputs.push(input);
            let rebuilt = Trip::replay(
                trip_id,
                &entry.declaration,
                entry.trip.status.created_at,
                &entry.trip.rules,
                &entry.inputs,
                &geo,
                &rules,
                now,
            );
            let fx = reconcile(&entry.trip, &rebuilt, now);
            entry.trip = rebuilt;
            return Ok(fx);
        }
        let fx = entry.trip.apply(&input, &geo, &rules, now)?;
        if keep {
            entry.inputs.push(input);
        }
        Ok(fx)
    }

    /// Routes and applies a seal event; `None` when no trip carries its seal.
    pub fn apply_event(&mut self, event: SealEvent, now: Timestamp) -> Option<Vec<Effect>> {
        let trip_id = self.route(&event)?;
        self.apply(trip_id, Input::SealEvent(event), now).ok()
    }

    /// The clock, for every trip.
    pub fn tick(&mut self, now: Timestamp) -> Vec<(TripId, Effect)> {
        let mut out = Vec::new();
        let mut ids: Vec<TripId> = self.trips.keys().copied().collect();
        ids.sort();
        for id in ids {
            if let Some(entry) = self.trips.get_mut(&id) {
                for effect in entry.trip.tick(&self.geography, &self.rules, now) {
                    out.push((id, effect));
                }
            }
        }
        out
    }
}
