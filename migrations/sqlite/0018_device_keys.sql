-- devices known to the gateway: the platform that may post their events (a device
-- platform principal of that name), when registered to one.
create table devices (
    device_id text primary key,
    platform text,
    created_at text not null
);

-- a device's keys. several may be valid at once (rotation without a gap); a key is judged
-- at the event's time (valid_from <= time < valid_until) and its revocation at receipt.
create table device_keys (
    device_id text not null,
    key_id text not null,
    -- 'ed25519' or 'hmac-sha256'.
    algorithm text not null,
    -- ed25519: the public key, base64. hmac-sha256: the secret sealed with the server key
    -- file (chacha20-poly1305, base64 of nonce || ciphertext), never in clear.
    key_material text not null,
    valid_from text not null,
    -- null: no end.
    valid_until text,
    revoked_at text,
    created_at text not null,
    created_by text not null,
    primary key (device_id, key_id)
);

-- seal events refused by device authentication: kept as evidence with the reason, never
-- applied; they raise device_auth_failure on the trip their device serves.
create table seal_event_refusals (
    -- sha-256 of the event's canonical form and reason: the same refusal sent again is one row.
    refusal_id text primary key,
    device_id text not null,
    seq bigint,
    key_id text,
    event_time text not null,
    reason text not null,
    trip_id text references trips (trip_id),
    message_id text not null references messages (message_id),
    canonical text not null,
    received_at text not null
);
create index seal_event_refusals_by_trip on seal_event_refusals (trip_id, event_time);
create index seal_event_refusals_by_device on seal_event_refusals (device_id, received_at);

-- how an accepted event was authenticated: 'key:<key_id>', 'platform:<name>', or
-- 'none' (null for events stored before this migration). each (device, seq) is stored
-- once already (seal_events_by_device_seq): a signed seq taken is a replay when sent again
-- with other content.
alter table seal_events add column authenticated text;
