-- every version of a declaration, kept as evidence: version 1 is the declaration as first
-- registered, each amendment (ices message type a) adds the next. `declarations` holds the
-- current version, which the trip is built from.
create table declaration_versions (
    issuing_authority text not null,
    declaration_id text not null,
    version bigint not null,
    trip_id text not null references trips (trip_id),
    -- the message that brought this version.
    message_id text not null references messages (message_id),
    canonical text not null,
    received_at text not null,
    primary key (issuing_authority, declaration_id, version)
);

insert into declaration_versions
    (issuing_authority, declaration_id, version, trip_id, message_id, canonical, received_at)
select issuing_authority, declaration_id, 1, trip_id, message_id, canonical, received_at
from declarations;
