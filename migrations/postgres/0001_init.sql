-- the first schema of the gateway. times are rfc 3339 utc text with microseconds and a
-- trailing z (fixed width), so they sort as text the same in sqlite and postgresql and
-- one set of queries serves both.

-- every message as received or sent, byte for byte (evidence), next to its parsed form.
create table messages (
    message_id text primary key,
    direction text not null check (direction in ('in', 'out')),
    format text not null,
    transport text not null,
    source text not null,
    content_type text,
    received_at text not null,
    body bytea not null,
    body_sha256 text not null,
    parsed text,
    outcome text not null check (outcome in ('accepted', 'duplicate', 'rejected')),
    problem text,
    -- the answer given, so that a resent message gets the same one.
    response_status bigint,
    response_body text
);
create index messages_by_body on messages (format, body_sha256);
create index messages_by_time on messages (received_at);

create table trips (
    trip_id text primary key,
    issuing_authority text not null,
    declaration_id text not null,
    state text not null,
    custodian text not null,
    corridor_id text,
    -- the trip status as the api returns it.
    status text not null,
    -- the engine's whole trip (status plus alert history), to continue from.
    engine text not null,
    -- optimistic concurrency: an update names the version it read.
    version bigint not null,
    created_at text not null,
    updated_at text not null
);
create index trips_by_reference on trips (declaration_id, issuing_authority);
create index trips_by_state on trips (state, updated_at);

create table declarations (
    issuing_authority text not null,
    declaration_id text not null,
    trip_id text not null unique references trips (trip_id),
    message_id text not null references messages (message_id),
    canonical text not null,
    declared_at text not null,
    received_at text not null,
    primary key (issuing_authority, declaration_id)
);

-- which trip a seal or device belongs to, to route events.
create table trip_seals (
    trip_id text not null references trips (trip_id),
    seal_id text not null,
    device_id text,
    primary key (trip_id, seal_id)
);
create index trip_seals_by_seal on trip_seals (seal_id);
create index trip_seals_by_device on trip_seals (device_id);

create table seal_events (
    -- the sender's event_id, else device_id:seq.
    event_key text primary key,
    device_id text not null,
    seq bigint,
    seal_id text,
    kind text not null,
    event_time text not null,
    -- null while no declared trip carries the seal.
    trip_id text references trips (trip_id),
    message_id text not null references messages (message_id),
    canonical text not null,
    received_at text not null
);
-- nulls are distinct here, so events without seq do not collide.
create unique index seal_events_by_device_seq on seal_events (device_id, seq);
create index seal_events_by_trip on seal_events (trip_id, event_time);

create table alerts (
    alert_id text primary key,
    trip_id text not null references trips (trip_id),
    kind text not null,
    severity text not null,
    raised_at text not null,
    cleared_at text,
    body text not null,
    updated_at text not null
);
create index alerts_by_trip on alerts (trip_id, raised_at);
create index alerts_by_time on alerts (raised_at);

create table corridors (
    corridor_id text primary key,
    width_m double precision not null,
    -- the geojson feature as registered.
    feature text not null,
    updated_at text not null
);

create table zones (
    zone_id text primary key,
    kind text not null,
    office_code text,
    feature text not null,
    updated_at text not null
);
create index zones_by_office on zones (office_code);
