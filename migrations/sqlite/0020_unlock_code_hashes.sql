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
