-- retention of rejected messages' raw bodies (issue 14). a rejected message keeps its
-- record (sender, time, reason, sha-256, size) for good; its body may be dropped once past
-- retention, and `body_purged_at` says when. accepted messages are evidence of trips and
-- are never purged.
alter table messages add column body_bytes bigint;
alter table messages add column body_purged_at text;

-- the size is kept apart from the body so that it outlives a purge.
update messages set body_bytes = length(body);

-- only the rejected bodies still held are ever swept: a partial index keeps the sweep's
-- reads proportional to them, not to the whole table. one for the age, one for the
-- per-sender total.
create index messages_rejected_held_by_time on messages (received_at)
    where outcome = 'rejected' and body_purged_at is null;
create index messages_rejected_held_by_source on messages (source, received_at)
    where outcome = 'rejected' and body_purged_at is null;
