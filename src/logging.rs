//! Log set-up shared by the two binaries: standard error, level from `-v` / `-q`, and the
//! progress bars log lines are printed above.
//!
//! A person at a terminal gets short local times (`14:03:27 [INFO] ...`); `-v`, or a standard
//! error that is a file or a pipe, gets full UTC timestamps with milliseconds, for logs read later.

use std::io::{self, IsTerminal, Write};
use std::sync::OnceLock;

use indicatif::MultiProgress;
use simplelog::{format_description, ConfigBuilder, FormatItem, LevelFilter, WriteLogger};

/// `14:03:27`, in local time when it can be determined.
const SHORT_TIME: &[FormatItem<'static>] = format_description!("[hour]:[minute]:[second]");
/// RFC 3339 in UTC with milliseconds: `2026-12-01T14:03:27.512Z`.
const FULL_TIME: &[FormatItem<'static>] =
    format_description!("[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond digits:3]Z");

/// How log lines are stamped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TimeStyle {
    /// `HH:MM:SS` local time, for a person watching a terminal.
    Short,
    /// RFC 3339 UTC with milliseconds, for logs kept or read by programs.
    Full,
}

/// Short times only on an interactive terminal without `-v`.
pub fn time_style(verbose: u8, stderr_is_terminal: bool) -> TimeStyle {
    if verbose == 0 && stderr_is_terminal {
        TimeStyle::Short
    } else {
        TimeStyle::Full
    }
}

/// Logs to standard error: warnings and progress by default, more with each `-v`, errors only with `-q`.
///
/// Call it before starting threads: the local time offset can only be read soundly then
/// (otherwise times stay in UTC).
pub fn init(verbose: u8, quiet: bool) {
    let level = match (quiet, verbose) {
        (true, _) => LevelFilter::Error,
        (false, 0) => LevelFilter::Info,
        (false, 1) => LevelFilter::Debug,
        (false, _) => LevelFilter::Trace,
    };
    let mut builder = ConfigBuilder::new();
    builder
        .set_time_level(LevelFilter::Error)
        .set_target_level(LevelFilter::Off)
        .set_thread_level(LevelFilter::Off);
    match time_style(verbose, io::stderr().is_terminal()) {
        TimeStyle::Short => {
            builder.set_time_format_custom(SHORT_TIME);
            // Fails when the offset cannot be read soundly (threads already running): UTC then.
            let _ = builder.set_time_offset_to_local();
        }
        TimeStyle::Full => {
            builder.set_time_format_custom(FULL_TIME);
        }
    }
    let writer = AboveBars::new(io::stderr());
    // A second init (tests starting several nodes in one process) is harmless.
    let _ = log::set_boxed_logger(WriteLogger::new(level, builder.build(), writer))
        .map(|()| log::set_max_level(level));
}

/// The progress bars of this process, drawn together on standard error (hidden when it is not a terminal).
pub fn bars() -> &'static MultiProgress {
    static BARS: OnceLock<MultiProgress> = OnceLock::new();
    BARS.get_or_init(MultiProgress::new)
}

/// Runs `print`, which writes to the terminal, with the progress bars lifted out of the way and
/// redrawn after, so text and bars never overwrite each other.
pub fn above_bars<R>(print: impl FnOnce() -> R) -> R {
    bars().suspend(print)
}

/// Standard error for log lines: each complete line is written in one piece above the bars.
struct AboveBars<W> {
    out: W,
    line: Vec<u8>,
}

impl<W: Write> AboveBars<W> {
    fn new(out: W) -> Self {
        AboveBars {
            out,
            line: Vec::new(),
        }
    }

    fn emit(&mut self, upto: usize) -> io::Result<()> {
        let rest = self.line.split_off(upto);
        let done = std::mem::replace(&mut self.line, rest);
        let out = &mut self.out;
        above_bars(|| out.write_all(&done).and_then(|()| out.flush()))
    }
}

impl<W: Write> Write for AboveBars<W> {
    fn write(&mut self, bytes: &[u8]) -> io::Result<usize> {
        self.line.extend_from_slice(bytes);
        if let Some(end) = self.line.iter().rposition(|&b| b == b'\n') {
            self.emit(end + 1)?;
        }
        Ok(bytes.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        if !self.line.is_empty() {
            self.emit(self.line.len())?;
        }
        self.out.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_times_only_on_a_terminal_without_verbose() {
        assert_eq!(time_style(0, true), TimeStyle::Short);
        assert_eq!(time_style(1, true), TimeStyle::Full);
        assert_eq!(time_style(0, false), TimeStyle::Full);
        assert_eq!(time_style(2, false), TimeStyle::Full);
    }

    #[test]
    fn a_line_is_written_whole_once_complete() {
        let mut w = AboveBars::new(Vec::new());
        assert_eq!(w.write(b"12:00:00 [INFO] ha").unwrap(), 18);
        assert!(w.out.is_empty(), "half a line written");
        w.write_all(b"lf\nnext").unwrap();
        assert_eq!(w.out, b"12:00:00 [INFO] half\n");
        w.flush().unwrap();
        assert_eq!(w.out, b"12:00:00 [INFO] half\nnext");
    }
}
