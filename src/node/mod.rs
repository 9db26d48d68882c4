//! The node: shares files from its folder and downloads files from their owners.
//!
//! Sans-IO parts, each driven with the time passed in: [`download`] (one
//! download's state machine), [`picker`] (which piece next, by
//! [`piece::PieceIndex`]), [`serve`] (answering one downloader), [`rate`] (the
//! upload limit), [`command`] (stdin). [`machine`] joins them into one sans-IO node; [`run`] drives it on a
//! reactor and the disk thread.

pub mod bitfield;
pub mod command;
pub mod config;
pub mod download;
pub mod machine;
pub mod peer;
pub mod picker;
pub mod piece;
pub mod progress;
pub mod rate;
pub mod run;
pub mod serve;
pub mod text;

pub use config::NodeConfig;
pub use run::{bind, NodeServer, RunReport};
