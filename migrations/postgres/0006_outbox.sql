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

insert into trip_parties (trip_id, party)
select d.trip_id, p
from declarations d,
     lateral (
        select substr(d.issuing_authority, 1, 2)
        union select d.canonical::jsonb #>> '{office_of_departure,country}'
        union select d.canonical::jsonb #>> '{office_of_destination,country}'
        union select o ->> 'country'
              from jsonb_array_elements(coalesce(d.canonical::jsonb -> 'offices_of_transit', '[]'::jsonb)) o
        union select c
              from jsonb_array_elements_text(coalesce(d.canonical::jsonb -> 'itinerary', '[]'::jsonb)) c
     ) as parties (p)
where p is not null
on conflict do nothing;

-- a transport's own message id (an amqp message_id, else the body's hash) per sender, so a
-- redelivered message is recognised.
alter table messages add column transport_message_id text;
create index messages_by_transport_id on messages (source, transport_message_id);
-- one accepted message per sender and transport id, even if two instances race.
create unique index messages_accepted_transport_id on messages (source, transport_message_id)
    where outcome = 'accepted' and transport_message_id is not null;

create table outbox (
    seq bigserial primary key,
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
    body bytea,
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
