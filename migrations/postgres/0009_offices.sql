-- The office registry, one for every format. The entry is kept as checked JSON; country
-- and roles are also columns so that lists filter in SQL on both backends.
create table offices (
    code text primary key,
    country text not null,
    -- '|departure|transit|': a role filter is a `like` on either backend.
    roles text not null,
    entry text not null,
    updated_at text not null
);

create index offices_country on offices (country, code);
