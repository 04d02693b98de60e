-- checkpoints for late data: the engine's trip as it stood after every input up to
-- taken_at (event time) had been applied in order. a late input replays from the last
-- checkpoint before it instead of from the declaration; checkpoints at or after a late
-- input's time are dropped, as they no longer hold.
create table trip_checkpoints (
    trip_id text not null references trips (trip_id),
    taken_at text not null,
    engine text not null,
    primary key (trip_id, taken_at)
);

-- when the clock next has something to check on the trip (a gap, a stop, the time
-- limit): the ticker looks only at trips due.
alter table trips add column next_due_at text;
create index trips_by_due on trips (next_due_at);
