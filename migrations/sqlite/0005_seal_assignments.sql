-- seal assignments (an exporter's e-seal record, a manifest's container-to-seal link) are
-- commands kept for replay like releases and handovers. sqlite cannot change a check
-- constraint: the table is rebuilt.
create table trip_commands_new (
    trip_id text not null references trips (trip_id),
    command_key text not null,
    kind text not null check (kind in ('release', 'handover', 'cancel', 'seal_assignment')),
    command_time text not null,
    input text not null,
    received_at text not null,
    primary key (trip_id, command_key)
);
insert into trip_commands_new (trip_id, command_key, kind, command_time, input, received_at)
select trip_id, command_key, kind, command_time, input, received_at from trip_commands;
drop table trip_commands;
alter table trip_commands_new rename to trip_commands;

-- the containers of each trip: a manifest names containers, not declarations.
create table trip_equipment (
    trip_id text not null references trips (trip_id),
    equipment_id text not null,
    primary key (trip_id, equipment_id)
);
create index trip_equipment_by_equipment on trip_equipment (equipment_id);

insert or ignore into trip_equipment (trip_id, equipment_id)
select distinct d.trip_id, json_extract(e.value, '$.id')
from declarations d, json_each(d.canonical, '$.equipment') e;
