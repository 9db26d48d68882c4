//! Log set-up shared by the two binaries: standard error, level from `-v` / `-q`.

use simplelog::{ColorChoice, ConfigBuilder, LevelFilter, TermLogger, TerminalMode};

/// Logs to standard error: warnings and progress by default, more with each `-v`, errors only with `-q`.
pub fn init(verbose: u8, quiet: bool) {
    let level = match (quiet, verbose) {
        (true, _) => LevelFilter::Error,
        (false, 0) => LevelFilter::Info,
        (false, 1) => LevelFilter::Debug,
        (false, _) => LevelFilter::Trace,
    };
    let config = ConfigBuilder::new()
        .set_time_format_rfc3339()
        .set_target_level(LevelFilter::Off)
        .set_thread_level(LevelFilter::Off)
        .build();
    // A second init (tests starting several nodes in one process) is harmless.
    let _ = TermLogger::init(level, config, TerminalMode::Stderr, ColorChoice::Never);
}
