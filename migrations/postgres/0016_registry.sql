-- The office registry's version: a counter bumped in every transaction that changes an
-- office, so that a cached registry (another instance's, at its tick) is read again after
-- any change, whatever the clocks or the count of offices say.
create table office_registry_version (
    id bigint primary key,
    version bigint not null
);
insert into office_registry_version (id, version) values (1, 0);

-- Who changed the office registry and the geometry, and when: one row per office, zone or
-- corridor written (`GET /v1/registry/changes`). `actor` is `operator`, `partner:<id>`,
-- `cli` (`ects-gateway offices import`) or `shipped` (the reference data seeded at start);
-- `entry` is what was stored (the office's entry, the zone's or corridor's feature).
create table registry_changes (
    seq bigserial primary key,
    changed_at text not null,
    actor text not null,
    subject text not null,
    subject_id text not null,
    action text not null,
    entry text not null
);
create index registry_changes_by_subject on registry_changes (subject, subject_id, seq);
