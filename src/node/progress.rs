//! Showing a download's progress: a bar on a terminal, a periodic log line otherwise.

use std::io::IsTerminal;
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

use super::download::{Phase, Progress};

/// How often a progress line is logged when standard error is not a terminal.
const LOG_EVERY: Duration = Duration::from_secs(2);

/// One download's progress display.
pub struct ProgressView {
    name: String,
    bar: Option<ProgressBar>,
    next_log: Option<Instant>,
}

impl ProgressView {
    /// A display for `name`; `enabled` false shows nothing.
    pub fn new(name: &str, enabled: bool, now: Instant) -> Self {
        let terminal = enabled && std::io::stderr().is_terminal();
        let bar = terminal.then(|| {
            let bar = ProgressBar::with_draw_target(Some(0), ProgressDrawTarget::stderr());
            let style = ProgressStyle::with_template(
                "{msg:>12.bold} [{bar:30.cyan/blue}] {bytes}/{total_bytes} {binary_bytes_per_sec} eta {eta}",
            )
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> ");
            bar.set_style(style);
            bar.set_message(name.to_owned());
            bar
        });
        ProgressView {
            name: name.to_owned(),
            bar,
            next_log: (enabled && !terminal).then_some(now + LOG_EVERY),
        }
    }

    /// Redraws (or logs, at most every [`LOG_EVERY`]) the current state.
    pub fn update(&mut self, now: Instant, progress: &Progress) {
        // Never show 100 % before the file is complete and renamed.
        let shown = if progress.phase == Phase::Done {
            progress.done
        } else {
            progress.done.min(progress.total.saturating_sub(1))
        };
        if let Some(bar) = &self.bar {
            bar.set_length(progress.total);
            bar.set_position(shown);
        }
        if let Some(next) = self.next_log.filter(|&t| t <= now) {
            self.next_log = Some(next.max(now - LOG_EVERY) + LOG_EVERY);
            if progress.total > 0 {
                log::info!(
                    "{}: {:.1}% ({} of {} bytes) at {:.1} MiB/s from {} owners",
                    self.name,
                    shown as f64 * 100.0 / progress.total as f64,
                    shown,
                    progress.total,
                    progress.rate / f64::from(1 << 20),
                    progress.owners
                );
            }
        }
    }

    /// Ends the display with a final message.
    pub fn finish(&mut self, done: bool) {
        if let Some(bar) = self.bar.take() {
            if done {
                bar.finish();
            } else {
                bar.abandon();
            }
        }
        self.next_log = None;
    }
}
