//! shoal: a BitTorrent-like peer-to-peer file-sharing network.
//!
//! A tracker knows which nodes own which file; nodes share files from their
//! folder and download files in parallel pieces from every owner at once.
//! Each process is one single-threaded mio reactor.
//!
//! Start reading at [`wire`] (the bytes on the wire), then [`reactor`] (the
//! event loop), [`storage`] (a node's folder), and the two protocols,
//! [`tracker`] and [`node`]. Dependencies point one way:
//! `bin → tracker / node → reactor, wire, storage`; [`names`] (the name rule),
//! [`layout`] (a file's size and piece size) and [`hex`] are leaves any of them may use.

pub mod hex;
pub mod layout;
pub mod logging;
pub mod names;
pub mod node;
pub mod reactor;
pub mod storage;
pub mod tracker;
pub mod wire;
