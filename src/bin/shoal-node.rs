//! `shoal-node`: shares files from its folder and downloads files from their owners.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use shoal::node::rate::{parse_rate, parse_size};
use shoal::node::{self, NodeConfig};

/// A shoal node. Reads commands on standard input (type `help`); keeps serving
/// after end of input until `exit`, SIGINT or SIGTERM.
#[derive(Parser, Debug)]
#[command(version)]
struct Args {
    /// This node's name.
    #[arg(short = 'n', long = "name")]
    name: String,
    /// Port to listen on for peers (0: the OS picks); a second port is accepted for the heritage command line.
    #[arg(short = 'p', long = "port", num_args = 1..=2, required = true)]
    ports: Vec<u16>,
    /// The tracker's address.
    #[arg(long, default_value = "127.0.0.1:12340")]
    tracker: SocketAddr,
    /// This node's folder [default: node_files/NAME].
    #[arg(long)]
    dir: Option<PathBuf>,
    /// Address to listen on; 0.0.0.0 or :: to serve a LAN.
    #[arg(long, default_value = "127.0.0.1")]
    listen_host: IpAddr,
    /// Share FILE from the folder (repeatable).
    #[arg(long = "upload", value_name = "FILE")]
    uploads: Vec<String>,
    /// Download FILE into the folder (repeatable).
    #[arg(long = "download", value_name = "FILE")]
    downloads: Vec<String>,
    /// Upload limit for the whole node, e.g. 50M (K/M/G = KiB/MiB/GiB per second) [default: unlimited].
    #[arg(long, value_parser = parse_rate)]
    max_upload_rate: Option<u64>,
    /// Piece size for files this node publishes first (16K to 64M).
    #[arg(long, default_value = "1M", value_parser = parse_size)]
    piece_size: u64,
    /// Seconds a download may go without any owner delivering anything before it fails (verified pieces are kept).
    #[arg(long, default_value_t = 30.0, value_name = "SECONDS")]
    give_up_after: f64,
    /// Exit once every --download has finished (non-zero status if any failed).
    #[arg(long)]
    exit_when_done: bool,
    /// Log more, with full timestamps (a terminal otherwise gets short local times); twice for protocol traces.
    #[arg(short, long, action = clap::ArgAction::Count)]
    verbose: u8,
    /// Log only errors.
    #[arg(short, long)]
    quiet: bool,
}

fn main() -> ExitCode {
    let args = Args::parse();
    shoal::logging::init(args.verbose, args.quiet);
    let piece_size = match u32::try_from(args.piece_size) {
        Ok(size) if (shoal::wire::MIN_PIECE_SIZE..=shoal::wire::MAX_PIECE_SIZE).contains(&size) => {
            size
        }
        _ => {
            eprintln!("shoal-node: --piece-size must be between 16K and 64M");
            return ExitCode::from(2);
        }
    };
    if !(args.give_up_after.is_finite() && (0.0..=86400.0).contains(&args.give_up_after)) {
        eprintln!("shoal-node: --give-up-after must be between 0 and 86400 seconds");
        return ExitCode::from(2);
    }
    let mut config = NodeConfig::new(&args.name);
    config.download.no_source_timeout = Duration::from_secs_f64(args.give_up_after);
    config.listen = SocketAddr::new(args.listen_host, args.ports[0]);
    config.tracker = args.tracker;
    if let Some(dir) = args.dir {
        config.dir = dir;
    }
    config.uploads = args.uploads;
    config.downloads = args.downloads;
    config.max_upload_rate = args.max_upload_rate;
    config.piece_size = piece_size;
    config.exit_when_done = args.exit_when_done;
    config.stdin = true;
    config.progress = !args.quiet;
    let exit_when_done = config.exit_when_done;
    let server = match node::bind(config) {
        Ok(server) => server,
        Err(e) => {
            eprintln!("shoal-node: cannot start: {e}");
            return ExitCode::FAILURE;
        }
    };
    println!("node {} listening on {}", args.name, server.local_addr());
    match server.run() {
        Ok(report) if exit_when_done && report.failed > 0 => ExitCode::FAILURE,
        Ok(_) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("shoal-node: {e}");
            ExitCode::FAILURE
        }
    }
}
