-- A withheld event (one a partner sent for a device a trip it may not see holds) is
-- matched as a stored event is: by its key, or by device and sequence number, so that
-- the same seq under another key is a conflict here too (the answer must not tell the
-- two apart).
alter table withheld_events add column seq bigint;
create index withheld_events_by_seq on withheld_events (partner_id, device_id, seq);
