//! `shoal-tracker`: knows which nodes own which file.

use std::io::Write as _;
use std::net::SocketAddr;
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use shoal::tracker::{self, TrackerConfig, TrackerLimits};

/// The shoal tracker: keeps, per file, the nodes that own it.
#[derive(Parser, Debug)]
#[command(version)]
struct Args {
    /// Address to listen on for nodes.
    #[arg(long, default_value = "127.0.0.1:12340")]
    listen: SocketAddr,
    /// Seconds a disconnected node's entries are kept for it to reconnect.
    #[arg(long, default_value_t = 5.0, value_parser = parse_seconds)]
    grace: f64,
    /// Log more (owner tables as they change), with full timestamps; twice for protocol traces.
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
        limits: TrackerLimits {
            grace: Duration::from_secs_f64(args.grace),
            ..TrackerLimits::default()
        },
    };
    let server = match tracker::bind(config) {
        Ok(server) => server,
        Err(e) => {
            eprintln!("shoal-tracker: cannot listen on {}: {e}", args.listen);
            return ExitCode::FAILURE;
        }
    };
    // Scripts read the address here; a closed stdout must not stop the tracker.
    let _ = writeln!(
        std::io::stdout(),
        "tracker listening on {}",
        server.local_addr()
    );
    match server.run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("shoal-tracker: {e}");
            ExitCode::FAILURE
        }
    }
}

fn parse_seconds(text: &str) -> Result<f64, String> {
    match text.parse::<f64>() {
        Ok(s) if s.is_finite() && (0.0..=86400.0).contains(&s) => Ok(s),
        _ => Err(format!(
            "invalid duration {text:?}: expected seconds between 0 and 86400"
        )),
    }
}
