-- partners' answers to what the gateway sent them: an icegate ack, a wco dms notification
-- (dmsacc / dmsrej). each names the outbox row it answers by that row's message id (our
-- reference, written into the message: icegate headerField/sequenceOrControlNumber, wco
-- Response/FunctionalReferenceID, ects-json "reference"). every answer is kept; the latest
-- of a row decides what the row shows. the raw answer is the messages row message_id.
create table outbox_answers (
    id integer primary key autoincrement,
    outbox_seq bigint not null references outbox (seq),
    partner_id text not null,
    message_id text not null references messages (message_id),
    format text not null,
    received_at text not null,
    outcome text not null check (outcome in ('accepted', 'rejected')),
    reason text,
    -- json array of {path, code, message}, capped.
    errors text not null,
    -- the partner's own reference of its answer (icegate csn number, wco functional
    -- reference id) and further ids it gave (cargo ids, the declaration id), json.
    reference text,
    ids text not null,
    body_sha256 text not null
);
create index outbox_answers_by_row on outbox_answers (outbox_seq, id);
