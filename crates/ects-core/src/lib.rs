//! The ECTS tracking engine: the canonical customs transit model, geometry of corridors and
//! zones, and the trip state machine. No I/O and no clock: every input carries its time.

pub mod geo;
pub mod ids;
pub mod model;
pub mod trip;

pub use ids::*;
pub use model::*;
