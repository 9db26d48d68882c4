//! shoal: a BitTorrent-like peer-to-peer file-sharing network.
pub mod wire;
