-- what a partner's document held that no binding of its mapping read: kept with the raw
-- message as a json array of document paths, never silently dropped.
alter table messages add column unmapped text;
