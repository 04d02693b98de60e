-- partners: who may see a trip (its parties), what we inbound-received per partner message
-- id, and the transactional outbox of notifications to deliver.

-- the parties of each trip: the countries it concerns (issuing authority, offices,
-- itinerary) and 'filer:<partner>' for the partner that filed its declaration.
create table trip_parties (
    trip_id text not null references trips (trip_id),
    party text not null,
    primary key (trip_id, party)
);
create index trip_parties_by_party on trip_parties (party);

insert or ignore into trip_parties (trip_id, party)
select trip_id, p from (
    select trip_id, substr(issuing_authority, 1, 2) as p from declarations
    union select trip_id, json_extract(canonical, '$.office_of_departure.country') from declarations
    union select trip_id, json_extract(canonical, '$.office_of_destination.country') from declarations
    union select d.trip_id, json_extract(o.value, '$.country')
          from declarations d, json_each(d.canonical, '$.offices_of_transit') o
    union select d.trip_id, c.value
          from declarations d, json_each(d.canonical, '$.itinerary') c
)
where p is not null;

-- a transport's own message id (an amqp message_id, else the body's hash) per sender, so a
-- redelivered message is recognised.
alter table messages add column transport_message_id text;
create index messages_by_transport_id on messages (source, transport_message_id);
-- one accepted message per sender and transport id, even if two instances race.
create unique index messages_accepted_transport_id on messages (source, transport_message_id)
    where outcome = 'accepted' and transport_message_id is not null;

create table outbox (
    seq integer primary key autoincrement,
    -- our id of this delivery: the amqp message_id and the x-ects-message-id header.
    message_id text not null unique,
    partner_id text not null,
    channel text not null check (channel in ('amqp', 'http')),
    trip_id text not null,
    declaration_id text not null,
    notification_id text not null,
    kind text not null,
    format text not null,
    -- the notification, canonical json; written in the partner's format when first sent.
    canonical text not null,
    body blob,
    content_type text,
    status text not null check (status in ('pending', 'sent', 'failed')),
    attempts bigint not null default 0,
    next_attempt_at text not null,
    lease_until text,
    -- who holds the lease: results are written only by the holder.
    lease_token text,
    last_error text,
    created_at text not null,
    sent_at text,
    unique (partner_id, channel, notification_id)
);
create index outbox_due on outbox (status, next_attempt_at);
create index outbox_by_stream on outbox (partner_id, channel, trip_id, seq);
