-- API tokens of people and platforms (`ects-gateway token create`). A token is
-- `ects_<id>_<secret>`: `id` finds the row, and only the HMAC-SHA256 of the secret under
-- the server's token key (`[auth] token_key_file`) is kept, so a copy of the database alone
-- cannot be turned into working tokens. Times are RFC 3339 text, as elsewhere.
create table api_tokens (
    id text primary key,
    name text not null unique,
    -- admin, operator, officer, single-window, shipper, transporter, integrator,
    -- device-platform
    role text not null,
    -- An officer's authority (`KE`, `KE-KRA`); none for the other roles.
    authority text,
    -- A shipper's declarant id or a transporter's carrier id.
    party text,
    key_hash text not null,
    created_at text not null,
    created_by text not null,
    expires_at text not null,
    revoked_at text,
    last_used_at text
);
