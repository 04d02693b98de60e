-- issue 15, item 6: one-time codes kept as hashes, and partners confined to their trips.
-- one-time unlock codes are kept only as hashes (issue 15, item 6). the hash is sha-256,
-- which sqlite's sql cannot compute, so the gateway converts stored clear codes itself,
-- once, right after this migration (src/store/codes.rs), and records it here.
create table data_conversions (
    name text primary key,
    done_at text not null
);

-- an audit payload from which a clear code was removed keeps its entry, its chained
-- payload_sha256 and its hash (so the chain and any head hash kept elsewhere still hold);
-- the sha-256 of the payload as it now reads is kept here, and checked instead.
alter table audit_log add column redacted_payload_sha256 text;

-- confinement (issue 15, item 6). an event a partner sent for a device that a trip it may
-- not see holds is kept here, apart: never applied, never claimed, and a resend is
-- answered as for an unknown device (duplicate, conflicting variant, unmatched).
create table withheld_events (
    partner_id text not null,
    event_key text not null,
    content_sha256 text not null,
    device_id text not null,
    canonical text not null,
    message_id text not null references messages (message_id),
    received_at text not null,
    primary key (partner_id, event_key, content_sha256)
);
create index withheld_events_by_message on withheld_events (message_id);

-- the parties a partner that sent an event kept without a trip may see, as
-- ',filer:<id>,<country>,': only a trip with one of them claims the event later.
alter table seal_events add column sent_by_parties text;
