//! The gateway's integration suite: the real server over HTTP, on SQLite and PostgreSQL.

mod helpers;
mod mapping;

mod access;
mod amqp;
mod amqps;
mod answers;
mod assignments;
mod bad_input;
mod cli;
mod confinement;
mod contract;
mod custody;
mod declarations;
mod decode_pool;
mod devices;
mod events;
mod geometry;
mod hostile;
mod icegate;
mod offices;
mod operations;
mod outbox;
mod outbox_load;
mod paging;
mod partners;
mod push;
mod retention;
mod slow_clients;
mod status;
mod suite;
mod tls;
mod tracking;
mod trips;
mod trust;
mod versions;
