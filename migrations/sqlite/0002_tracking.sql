-- the tracking engine in the gateway: commands kept for replay, the audit chain, unlock
-- commands for seals, and a version stamp that tells every instance to reload geometry.

-- release authorizations, handovers and cancellations as applied to a trip (seal events
-- are in seal_events); together they let a trip be replayed in event-time order.
create table trip_commands (
    trip_id text not null references trips (trip_id),
    command_key text not null,
    kind text not null check (kind in ('release', 'handover', 'cancel')),
    command_time text not null,
    -- the engine's input, as json.
    input text not null,
    received_at text not null,
    primary key (trip_id, command_key)
);

-- one hash chain per trip: every input accepted and every effect, in order.
create table audit_log (
    trip_id text not null references trips (trip_id),
    seq bigint not null,
    entry_time text not null,
    actor text not null,
    action text not null,
    payload text not null,
    payload_sha256 text not null,
    prev_hash text not null,
    hash text not null,
    primary key (trip_id, seq)
);

create table seal_commands (
    command_id text primary key,
    trip_id text not null references trips (trip_id),
    seal_id text not null,
    device_id text not null,
    body text not null,
    created_at text not null,
    status text not null default 'pending'
);
create index seal_commands_by_device on seal_commands (device_id, status);

-- an alert that late events showed would not have been raised stays as evidence.
alter table alerts add column withdrawn_at text;

create table geometry_version (
    id bigint primary key,
    version bigint not null
);
insert into geometry_version (id, version) values (1, 0);
