-- Thresholds and geometry are versioned: every input keeps the geometry version and the
-- trip's rules version in force when it was received, and a replay judges it with those.
-- A row per corridor or zone written, at the geometry version its write made; the
-- geography at version v is, per feature, its row with the greatest version <= v.
create table geometry_history (
    kind text not null,
    feature_id text not null,
    version bigint not null,
    feature text not null,
    primary key (kind, feature_id, version)
);
insert into geometry_history (kind, feature_id, version, feature)
    select 'corridor', corridor_id, (select version from geometry_version where id = 1), feature
    from corridors;
insert into geometry_history (kind, feature_id, version, feature)
    select 'zone', zone_id, (select version from geometry_version where id = 1), feature
    from zones;

-- A trip's own thresholds, one row per change (`PUT /v1/trips/{id}/rules`); version 0 is
-- what the trip had before its first change here.
create table trip_rules_versions (
    trip_id text not null,
    version bigint not null,
    rules text not null,
    set_at text not null,
    primary key (trip_id, version)
);

-- The versions an input was received under; null (inputs stored before this migration):
-- judged with the current ones.
alter table seal_events add column geometry_version bigint;
alter table seal_events add column rules_version bigint;
alter table seal_event_conflicts add column geometry_version bigint;
alter table seal_event_conflicts add column rules_version bigint;
alter table seal_event_refusals add column geometry_version bigint;
alter table seal_event_refusals add column rules_version bigint;
alter table trip_commands add column geometry_version bigint;
alter table trip_commands add column rules_version bigint;
