-- conflicting variants of one stored event are kept up to a cap (5, in src/ingest.rs);
-- past it they are only counted here, so that a device replaying one seq with endless
-- variants cannot grow the evidence table without bound.
alter table seal_events add column conflicts_dropped bigint not null default 0;

-- set when the engine failed on this trip's live inputs (stored already): the earliest of
-- them. The next input or tick rebuilds the trip from its stored inputs, then clears it.
alter table trips add column rebuild_from text;

-- a stored event's conflicting variants, counted for the cap and listed with the event.
create index seal_event_conflicts_by_stored on seal_event_conflicts (conflicts_with);
