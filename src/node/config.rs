//! What a node is told at start: the command-line contract as a value.

use std::net::SocketAddr;
use std::path::PathBuf;

use super::download::DownloadConfig;

/// Everything `node::bind` needs.
#[derive(Clone, Debug)]
pub struct NodeConfig {
    /// The node's name (`-n`).
    pub name: String,
    /// Where to listen for peers (`--listen-host` and `-p`; port 0 lets the OS pick).
    pub listen: SocketAddr,
    /// The tracker's address.
    pub tracker: SocketAddr,
    /// The node's folder.
    pub dir: PathBuf,
    /// Files to share at start.
    pub uploads: Vec<String>,
    /// Files to fetch at start.
    pub downloads: Vec<String>,
    /// Upload limit for the whole node, bytes per second.
    pub max_upload_rate: Option<u64>,
    /// Piece size for files this node publishes first.
    pub piece_size: u32,
    /// Stop once every start-up download has finished or failed.
    pub exit_when_done: bool,
    /// Read commands from standard input.
    pub stdin: bool,
    /// Show progress bars (when standard error is a terminal) or progress log lines.
    pub progress: bool,
    /// Download timeouts and bounds.
    pub download: DownloadConfig,
}

impl NodeConfig {
    /// Defaults of the command line for a node called `name` (folder `node_files/NAME`).
    pub fn new(name: &str) -> Self {
        NodeConfig {
            name: name.to_owned(),
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            tracker: SocketAddr::from(([127, 0, 0, 1], 12340)),
            dir: PathBuf::from("node_files").join(name),
            uploads: Vec::new(),
            downloads: Vec::new(),
            max_upload_rate: None,
            piece_size: 1 << 20,
            exit_when_done: false,
            stdin: false,
            progress: false,
            download: DownloadConfig::default(),
        }
    }
}
