//! The tracker: knows which nodes own which file, and keeps downloaders told.
//!
//! [`state`] is the sans-IO state machine (owners, sessions, expiry, bounded
//! tables); [`run`] drives it on a reactor.

pub mod run;
pub mod state;

pub use run::{bind, bind_with_reactor, TrackerConfig, TrackerServer};
pub use state::{TrackerLimits, TrackerState};
