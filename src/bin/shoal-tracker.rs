//! `shoal-tracker`: knows which nodes own which file.

use std::net::SocketAddr;
use std::process::ExitCode;

use clap::Parser;
use shoal::tracker::{self, TrackerConfig, TrackerLimits};

/// The shoal tracker: keeps, per file, the nodes that own it.
#[derive(Parser, Debug)]
#[command(version, about)]
struct Args {
    /// Address to listen on for nodes.
    #[arg(long, default_value = "127.0.0.1:12340")]
    listen: SocketAddr,
    /// Log more (owner tables as they change); twice for protocol traces.
    #[arg(short, long, action = clap::ArgAction::Count)]
    verbose: u8,
    /// Log only errors.
    #[arg(short, long)]
    quiet: bool,
}

fn main() -> ExitCode {
    let args = Args::parse();
    shoal::logging::init(args.verbose, args.quiet);
    let config = TrackerConfig {
        listen: args.listen,
        limits: TrackerLimits::default(),
    };
    let server = match tracker::bind(config) {
        Ok(server) => server,
        Err(e) => {
            eprintln!("shoal-tracker: cannot listen on {}: {e}", args.listen);
            return ExitCode::FAILURE;
        }
    };
    println!("tracker listening on {}", server.local_addr());
    match server.run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("shoal-tracker: {e}");
            ExitCode::FAILURE
        }
    }
}
