-- the alert a notification is about (alert notifications only): a withdrawal finds every
-- notification of its alert, whatever its phase or recurrence (`alert/{id}/raised/{n}`),
-- through the index instead of scanning the outbox. notification ids are hashes of those
-- names, so they cannot be matched by prefix.
alter table outbox add column alert_id text;
update outbox set alert_id = json_extract(canonical, '$.alert.alert_id') where kind = 'alert';
create index outbox_by_trip_alert on outbox (trip_id, alert_id) where alert_id is not null;

-- a status notification of a state milestone (arrived, released, cancelled): never
-- superseded, every partner gets each one; only the statuses in between are coalesced.
alter table outbox add column milestone bigint not null default 0;
update outbox set milestone = 1
where kind = 'status' and json_extract(canonical, '$.state') in ('arrived', 'released', 'cancelled');
-- the statuses a newer one may supersede, counted before it does.
drop index outbox_untried_status;
create index outbox_coalescible on outbox (partner_id, channel, trip_id, seq)
    where kind = 'status' and status = 'pending' and attempts = 0 and superseded_by is null
      and milestone = 0;

-- the messages of each stream not yet sent nor superseded: the heads are recomputed from
-- these at start (a crash or a hand edit may have left a head missing or on a sent row),
-- at the cost of the waiting messages, not of the whole outbox.
create index outbox_waiting on outbox (partner_id, channel, trip_id, seq)
    where status <> 'sent' and superseded_by is null;
