-- The office registry's version: a counter bumped in every transaction that changes an
-- office, so that a cached registry (another instance's, at its tick) is read again after
-- any change, whatever the clocks or the count of offices say.
create table office_registry_version (
    id bigint primary key,
    version bigint not null
);
insert into office_registry_version (id, version) values (1, 0);
