-- a cancelled trip's seals are still watched (their events still route to it) until they
-- are released at an approved place or taken by another trip: then this is set.
alter table trip_seals add column released_at text;
