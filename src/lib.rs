//! shoal: a BitTorrent-like peer-to-peer file-sharing network.
//!
//! Start reading at [`wire`] (the bytes), then [`reactor`] (the event loop),
//! [`storage`] (a node's folder), [`tracker`] and [`node`] (the protocols).

pub mod node;
pub mod reactor;
pub mod storage;
pub mod tracker;
pub mod wire;
