-- keys of events sent with an event_id become unambiguous. 'id:{device}:{event_id}' read
-- two ways when either part held ':' (device A:B with id C was device A with id B:C); the
-- device's length in characters now says where it ends: 'eid:{length}:{device}:{event_id}'.
-- A new prefix, so no rewritten key can meet a key not yet rewritten. Keys by seq
-- ('seq:{device}:{seq}') were never ambiguous: the seq has no ':'.
update seal_events set event_key = 'eid:' || length(device_id) || ':' || substr(event_key, 4)
where event_key like 'id:%';

-- seal events that contradict a stored one (same key, or same device and seq, other
-- content): kept as evidence, never applied to seal state; they raise event_conflict.
create table seal_event_conflicts (
    -- sha-256 of the event's key and canonical form: the same conflicting event sent
    -- again is one row.
    conflict_id text primary key,
    event_key text not null,
    -- the key of the stored event it contradicts.
    conflicts_with text not null,
    device_id text not null,
    seq bigint,
    event_time text not null,
    -- null while no live trip carries the seal or device.
    trip_id text references trips (trip_id),
    message_id text not null references messages (message_id),
    canonical text not null,
    received_at text not null
);
create index seal_event_conflicts_by_trip on seal_event_conflicts (trip_id, event_time);
