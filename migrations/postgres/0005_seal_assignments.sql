-- seal assignments (an exporter's e-seal record, a manifest's container-to-seal link) are
-- commands kept for replay like releases and handovers.
alter table trip_commands drop constraint trip_commands_kind_check;
alter table trip_commands add constraint trip_commands_kind_check
    check (kind in ('release', 'handover', 'cancel', 'seal_assignment'));

-- the containers of each trip: a manifest names containers, not declarations.
create table trip_equipment (
    trip_id text not null references trips (trip_id),
    equipment_id text not null,
    primary key (trip_id, equipment_id)
);
create index trip_equipment_by_equipment on trip_equipment (equipment_id);

insert into trip_equipment (trip_id, equipment_id)
select distinct d.trip_id, e ->> 'id'
from declarations d,
     jsonb_array_elements(coalesce(d.canonical::jsonb -> 'equipment', '[]'::jsonb)) e
on conflict do nothing;
