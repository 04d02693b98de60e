//! The ECTS tracking engine: the canonical customs transit model, geometry of corridors and
//! zones, the trip state machine and its rules, and the audit hash chain. No I/O and no
//! clock: every input carries its time.

pub mod audit;
pub mod engine;
pub mod geo;
pub mod ids;
pub mod model;
pub mod spatial;
pub mod trip;

pub use ids::*;
pub use model::*;
