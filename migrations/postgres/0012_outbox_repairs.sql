-- the alert a notification is about (alert notifications only): a withdrawal finds every
-- notification of its alert, whatever its phase or recurrence (`alert/{id}/raised/{n}`),
-- through the index instead of scanning the outbox. notification ids are hashes of those
-- names, so they cannot be matched by prefix.
alter table outbox add column alert_id text;
update outbox set alert_id = canonical::jsonb #>> '{alert,alert_id}' where kind = 'alert';
create index outbox_by_trip_alert on outbox (trip_id, alert_id) where alert_id is not null;
