-- the outbox's stream heads: one row per stream (partner, channel, trip) that has a message
-- not yet sent, pointing at its earliest one. the dispatcher takes heads from here through
-- the index instead of searching each stream's backlog, so taking work costs the number of
-- streams, not the square of a stream's depth.
create table outbox_streams (
    partner_id text not null,
    channel text not null,
    trip_id text not null,
    head_seq bigint not null,
    primary key (partner_id, channel, trip_id)
);
create index outbox_streams_by_partner on outbox_streams (partner_id, head_seq);

-- a status notification that a newer one of the same stream made redundant before it was
-- tried: kept (its id still stops a replay from queueing it again), never sent.
alter table outbox add column superseded_by bigint;
-- how many earlier status notifications this one stands for.
alter table outbox add column coalesced bigint not null default 0;

insert into outbox_streams (partner_id, channel, trip_id, head_seq)
select partner_id, channel, trip_id, min(seq) from outbox
where status <> 'sent'
group by partner_id, channel, trip_id;

-- the untried status notifications of a stream, counted before a new one supersedes them.
create index outbox_untried_status on outbox (partner_id, channel, trip_id, seq)
    where kind = 'status' and status = 'pending' and attempts = 0 and superseded_by is null;
