//! Showing a download's progress: a bar on a terminal, a periodic log line otherwise, and the
//! plain sentences `status` prints.
//!
//! The bar appears only once there is something to fetch (the layout is known and pieces are
//! being checked or fetched), so a download that fails before that prints only its error line.

use std::io::IsTerminal;
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressStyle};

use super::download::{Phase, Progress};

/// How often a progress line is logged when standard error is not a terminal.
const LOG_EVERY: Duration = Duration::from_secs(2);

/// Time constant of the shown rate's smoothing: owners deliver in bursts, a person wants a
/// figure that holds still long enough to read.
const RATE_SMOOTHING: Duration = Duration::from_secs(1);
/// Cells between the bar's brackets.
const BAR_CELLS: u64 = 25;

impl Phase {
    /// What the download is doing, in words a user reads in `status`.
    pub fn describe(self) -> &'static str {
        match self {
            Phase::Owners => "waiting for the tracker's owner list",
            Phase::Hashes => "fetching piece hashes",
            Phase::Store => "opening its temporary file",
            Phase::Verify => "checking pieces kept from an earlier run",
            Phase::Pieces => "fetching pieces",
            Phase::Finishing => "finishing (flushing to disk)",
            Phase::Done => "complete",
            Phase::Failed => "failed",
        }
    }

    /// Whether there is a size and pieces to show a bar for.
    fn has_bar(self) -> bool {
        matches!(self, Phase::Verify | Phase::Pieces)
    }
}

/// The rate a person is shown: samples folded into an average over seconds (pure: no
/// drawing, so the sans-IO node keeps it for `status` while the driver draws).
#[derive(Clone, Debug, Default)]
pub struct ShownRate {
    /// The smoothed rate in bytes per second and when it was last updated.
    rate: Option<(f64, Instant)>,
}

impl ShownRate {
    /// `progress` with its rate replaced by the smoothed rate the display shows.
    pub fn smoothed(&self, mut progress: Progress) -> Progress {
        if let Some((rate, _)) = self.rate {
            progress.rate = rate;
        }
        progress
    }

    /// Folds a new rate sample into the shown rate (an exponential average over time).
    fn smooth(&mut self, now: Instant, sample: f64) {
        let sample = if sample.is_finite() {
            sample.max(0.0)
        } else {
            0.0
        };
        self.rate = Some(match self.rate {
            Some((rate, at)) if rate > 0.0 => {
                let dt = now.saturating_duration_since(at).as_secs_f64();
                let weight = 1.0 - (-dt / RATE_SMOOTHING.as_secs_f64()).exp();
                (rate + (sample - rate) * weight, now)
            }
            _ => (sample, now),
        });
    }

    /// Takes `progress`'s rate as the next sample.
    pub fn update(&mut self, now: Instant, progress: &Progress) {
        // With no owner connected nothing arrives, whatever the average remembers.
        if progress.owners == 0 {
            self.rate = Some((0.0, now));
        } else {
            self.smooth(now, progress.rate);
        }
    }
}

/// One download's progress display.
pub struct ProgressView {
    name: String,
    /// Standard error is a terminal and progress is wanted: a bar once there is something to fetch.
    terminal: bool,
    bar: Option<ProgressBar>,
    next_log: Option<Instant>,
    shown: ShownRate,
}

impl ProgressView {
    /// A display for `name`; `enabled` false shows nothing.
    pub fn new(name: &str, enabled: bool, now: Instant) -> Self {
        let terminal = enabled && std::io::stderr().is_terminal();
        ProgressView {
            name: name.to_owned(),
            terminal,
            bar: None,
            next_log: (enabled && !terminal).then_some(now + LOG_EVERY),
            shown: ShownRate::default(),
        }
    }

    /// `progress` with its rate replaced by the smoothed rate the display shows.
    pub fn smoothed(&self, progress: Progress) -> Progress {
        self.shown.smoothed(progress)
    }

    /// Smooths the rate of `progress`, then redraws (or logs) it.
    pub fn update(&mut self, now: Instant, progress: &Progress) {
        self.shown.update(now, progress);
        let progress = self.shown.smoothed(progress.clone());
        self.show(now, &progress);
    }

    /// Redraws (or logs, at most every [`LOG_EVERY`]) `progress`, its rate already smoothed.
    pub fn show(&mut self, now: Instant, progress: &Progress) {
        let shown = shown_bytes(progress);
        if self.bar.is_none() && self.terminal && progress.phase.has_bar() && progress.total > 0 {
            self.bar = Some(new_bar());
        }
        if let Some(bar) = &self.bar {
            // One string, so one redraw: percentage, bar and figures never disagree on screen.
            bar.set_message(bar_line(&self.name, progress));
        }
        if let Some(next) = self.next_log.filter(|&t| t <= now) {
            let floor = now.checked_sub(LOG_EVERY).unwrap_or(now);
            self.next_log = Some(next.max(floor) + LOG_EVERY);
            if progress.total > 0 && !matches!(progress.phase, Phase::Done | Phase::Failed) {
                log::info!(
                    "{}: {:.1}% ({} of {} bytes) at {:.1} MiB/s from {}, {}",
                    self.name,
                    shown as f64 * 100.0 / progress.total as f64,
                    shown,
                    progress.total,
                    progress.rate / f64::from(1 << 20),
                    owners(progress.owners),
                    progress.phase.describe()
                );
            }
        }
    }

    /// Ends the display: a completed bar stays on screen at 100 %; a failed one is taken away,
    /// leaving the error line that says why.
    pub fn finish(&mut self, done: bool) {
        if let Some(bar) = self.bar.take() {
            if done {
                bar.finish();
            } else {
                bar.finish_and_clear();
            }
        }
        self.next_log = None;
    }
}

/// A bar in this process's set of bars (so log lines print above it); it draws the line
/// [`bar_line`] makes.
fn new_bar() -> ProgressBar {
    let style =
        ProgressStyle::with_template("{msg}").unwrap_or_else(|_| ProgressStyle::default_bar());
    let bar = crate::logging::bars().add(ProgressBar::new(0));
    bar.set_style(style);
    bar
}

/// `video.mkv  42% [=====>     ] 431 MiB/1.0 GiB  812 MiB/s  eta 1s  4 owners`.
fn bar_line(name: &str, p: &Progress) -> String {
    let shown = shown_bytes(p);
    let cells = if p.total == 0 {
        0
    } else {
        u128::from(shown) * u128::from(BAR_CELLS) / u128::from(p.total)
    } as usize;
    let width = BAR_CELLS as usize;
    let bar = if cells >= width {
        "=".repeat(width)
    } else {
        format!("{}>{}", "=".repeat(cells), " ".repeat(width - cells - 1))
    };
    format!("{name} {:>4} [{bar}] {}", percent(p), bar_message(p))
}

/// `42%`, rounded down, never 100 % before the file is renamed.
fn percent(p: &Progress) -> String {
    let shown = shown_bytes(p);
    if p.total == 0 {
        return "0%".to_owned();
    }
    format!("{}%", u128::from(shown) * 100 / u128::from(p.total))
}

/// Verified bytes, but never all of them before the file is complete and renamed.
fn shown_bytes(progress: &Progress) -> u64 {
    if progress.phase == Phase::Done {
        progress.done
    } else {
        progress.done.min(progress.total.saturating_sub(1))
    }
}

/// What the bar says after its percentage: bytes, rate, ETA and owners (or that it is checking).
fn bar_message(p: &Progress) -> String {
    let bytes = format!("{}/{}", size(shown_bytes(p)), size(p.total));
    match p.phase {
        Phase::Verify => format!("{bytes}  checking pieces kept from an earlier run"),
        Phase::Finishing => format!("{bytes}  flushing to disk"),
        Phase::Done => format!("{bytes}  done"),
        _ if p.owners == 0 => format!("{bytes}  no owner connected"),
        _ => {
            let eta = eta(p.total.saturating_sub(p.done), p.rate)
                .map(|e| format!("  eta {e}"))
                .unwrap_or_default();
            format!(
                "{bytes}  {}/s{eta}  {}",
                size(p.rate as u64),
                owners(p.owners)
            )
        }
    }
}

/// The sentence `status` prints for the download of `name`.
pub fn status_line(name: &str, p: &Progress) -> String {
    let what = p.phase.describe();
    match p.phase {
        Phase::Owners => format!("download {name}: {what}"),
        Phase::Hashes | Phase::Store => format!(
            "download {name} ({}): {what}, {} connected",
            size(p.total),
            owners(p.owners)
        ),
        Phase::Done => format!("download {name}: {what}, {}", size(p.total)),
        Phase::Failed => format!("download {name}: {what} (the error line above says why)"),
        Phase::Verify | Phase::Finishing => {
            format!("download {name}: {}, {what}", fraction(p))
        }
        Phase::Pieces => {
            let from = if p.owners == 0 {
                "no owner connected".to_owned()
            } else {
                format!("{}/s from {}", size(p.rate as u64), owners(p.owners))
            };
            format!("download {name}: {}, {from}, {what}", fraction(p))
        }
    }
}

/// `42% (431 of 1024 MiB)`: both amounts in whole units, the largest unit the total holds at
/// least ten of, so the counts stay precise to about a percent.
fn fraction(p: &Progress) -> String {
    let shown = shown_bytes(p);
    let unit = unit_of(p.total / 10);
    let scale = 1u64 << (10 * unit);
    format!(
        "{} ({} of {} {})",
        percent(p),
        shown / scale,
        p.total / scale,
        UNITS[unit]
    )
}

/// `1 owner`, `4 owners`.
pub fn owners(count: usize) -> String {
    if count == 1 {
        "1 owner".to_owned()
    } else {
        format!("{count} owners")
    }
}

const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];

/// The largest binary unit the amount holds at least one of.
fn unit_of(bytes: u64) -> usize {
    let mut unit = 0;
    while unit + 1 < UNITS.len() && bytes >= 1u64 << (10 * (unit + 1)) {
        unit += 1;
    }
    unit
}

/// A size as a person reads it: `512 B`, `9.5 MiB`, `431 MiB`, `1.0 GiB`.
pub fn size(bytes: u64) -> String {
    let unit = unit_of(bytes);
    if unit == 0 {
        return format!("{bytes} B");
    }
    let value = bytes as f64 / (1u64 << (10 * unit)) as f64;
    if value < 10.0 {
        format!("{value:.1} {}", UNITS[unit])
    } else {
        format!("{value:.0} {}", UNITS[unit])
    }
}

/// Time left for `remaining` bytes at `rate` bytes per second: `7s`, `2m05s`, `1h02m`; None
/// while nothing arrives.
pub fn eta(remaining: u64, rate: f64) -> Option<String> {
    if !(rate.is_finite() && rate >= 1.0) {
        return None;
    }
    let secs = (remaining as f64 / rate).ceil();
    if secs > 99.0 * 3600.0 {
        return None;
    }
    let secs = secs as u64;
    Some(match secs {
        0..60 => format!("{secs}s"),
        60..3600 => format!("{}m{:02}s", secs / 60, secs % 60),
        _ => format!("{}h{:02}m", secs / 3600, secs % 3600 / 60),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: u64 = 1 << 20;

    fn at(phase: Phase, done: u64, total: u64, rate: f64, owners: usize) -> Progress {
        Progress {
            phase,
            done,
            total,
            rate,
            owners,
        }
    }

    #[test]
    fn sizes_read_like_a_person_writes_them() {
        assert_eq!(size(0), "0 B");
        assert_eq!(size(512), "512 B");
        assert_eq!(size(1536), "1.5 KiB");
        assert_eq!(size(431 * MIB), "431 MiB");
        assert_eq!(size(1 << 30), "1.0 GiB");
        assert_eq!(size(u64::MAX), "16777216 TiB");
    }

    #[test]
    fn eta_in_seconds_minutes_or_hours_and_none_when_stalled() {
        assert_eq!(eta(10 * MIB, 0.0), None);
        assert_eq!(eta(10 * MIB, f64::NAN), None);
        assert_eq!(eta(10 * MIB, 5.0 * MIB as f64).as_deref(), Some("2s"));
        assert_eq!(eta(125 * MIB, MIB as f64).as_deref(), Some("2m05s"));
        assert_eq!(eta(3720 * MIB, MIB as f64).as_deref(), Some("1h02m"));
        assert_eq!(eta(u64::MAX, 1.0), None);
    }

    #[test]
    fn one_owner_is_singular() {
        assert_eq!(owners(0), "0 owners");
        assert_eq!(owners(1), "1 owner");
        assert_eq!(owners(4), "4 owners");
    }

    #[test]
    fn status_says_in_plain_words_where_a_download_stands() {
        let p = at(Phase::Pieces, 431 * MIB, 1024 * MIB, 812.0 * MIB as f64, 4);
        assert_eq!(
            status_line("video.mkv", &p),
            "download video.mkv: 42% (431 of 1024 MiB), 812 MiB/s from 4 owners, fetching pieces"
        );
        let p = at(Phase::Pieces, 0, 4 * MIB, 0.0, 1);
        assert_eq!(
            status_line("a", &p),
            "download a: 0% (0 of 4096 KiB), 0 B/s from 1 owner, fetching pieces"
        );
        let p = at(Phase::Pieces, MIB, 4 * MIB, 0.0, 0);
        assert!(status_line("a", &p).contains("no owner connected"));
        let p = at(Phase::Owners, 0, 0, 0.0, 0);
        assert_eq!(
            status_line("a", &p),
            "download a: waiting for the tracker's owner list"
        );
        let p = at(Phase::Hashes, 0, 3 << 30, 0.0, 2);
        assert_eq!(
            status_line("a", &p),
            "download a (3.0 GiB): fetching piece hashes, 2 owners connected"
        );
        let p = at(Phase::Verify, 10 * MIB, 100 * MIB, 0.0, 0);
        assert_eq!(
            status_line("a", &p),
            "download a: 10% (10 of 100 MiB), checking pieces kept from an earlier run"
        );
        let p = at(Phase::Finishing, 100 * MIB, 100 * MIB, 0.0, 3);
        assert_eq!(
            status_line("a", &p),
            "download a: 99% (99 of 100 MiB), finishing (flushing to disk)"
        );
        let p = at(Phase::Done, 100 * MIB, 100 * MIB, 0.0, 0);
        assert_eq!(status_line("a", &p), "download a: complete, 100 MiB");
    }

    #[test]
    fn never_all_bytes_before_the_file_is_renamed() {
        for phase in [Phase::Pieces, Phase::Finishing] {
            let p = at(phase, 2 * MIB, 2 * MIB, 0.0, 1);
            assert_eq!(shown_bytes(&p), 2 * MIB - 1);
            assert!(!status_line("a", &p).contains("100%"));
        }
        assert_eq!(shown_bytes(&at(Phase::Done, 5, 5, 0.0, 0)), 5);
    }

    #[test]
    fn bar_message_has_bytes_rate_eta_and_owners() {
        let p = at(Phase::Pieces, 431 * MIB, 1024 * MIB, 812.0 * MIB as f64, 4);
        assert_eq!(
            bar_message(&p),
            "431 MiB/1.0 GiB  812 MiB/s  eta 1s  4 owners"
        );
        let p = at(Phase::Pieces, 0, 4 * MIB, 0.0, 1);
        assert_eq!(bar_message(&p), "0 B/4.0 MiB  0 B/s  1 owner");
        let p = at(Phase::Verify, MIB, 4 * MIB, 0.0, 0);
        assert!(bar_message(&p).contains("checking"));
        let p = at(Phase::Pieces, MIB, 4 * MIB, 3.0 * MIB as f64, 0);
        assert_eq!(bar_message(&p), "1.0 MiB/4.0 MiB  no owner connected");
    }

    #[test]
    fn bar_line_is_name_percentage_bar_and_figures() {
        let p = at(Phase::Pieces, 431 * MIB, 1024 * MIB, 812.0 * MIB as f64, 4);
        assert_eq!(
            bar_line("video.mkv", &p),
            "video.mkv  42% [==========>              ] 431 MiB/1.0 GiB  812 MiB/s  eta 1s  4 owners"
        );
        let p = at(Phase::Pieces, 4 * MIB, 4 * MIB, 0.0, 1);
        assert!(bar_line("a", &p).starts_with("a  99% [========================>]"));
        let p = at(Phase::Done, 4 * MIB, 4 * MIB, 0.0, 0);
        assert!(bar_line("a", &p).starts_with("a 100% [=========================] 4.0 MiB/4.0 MiB"));
    }

    #[test]
    fn the_shown_rate_is_smoothed_over_seconds() {
        let t0 = Instant::now();
        let mut view = ShownRate::default();
        let p = at(Phase::Pieces, 0, 100 * MIB, 4.0 * MIB as f64, 1);
        assert_eq!(view.smoothed(p.clone()).rate, p.rate, "no sample yet");
        view.smooth(t0, 4.0 * MIB as f64);
        assert_eq!(
            view.smoothed(p.clone()).rate,
            4.0 * MIB as f64,
            "the first sample is taken as is"
        );
        view.smooth(t0 + Duration::from_millis(200), 0.0);
        let rate = view.smoothed(p.clone()).rate / MIB as f64;
        assert!(
            (3.0..4.0).contains(&rate),
            "one burst gap barely moves it: {rate}"
        );
        view.smooth(t0 + Duration::from_secs(30), 1.0 * MIB as f64);
        let rate = view.smoothed(p).rate / MIB as f64;
        assert!(
            (rate - 1.0).abs() < 0.01,
            "a lasting change is followed: {rate}"
        );
        view.smooth(t0 + Duration::from_secs(31), f64::NAN);
        assert!(view.rate.is_some_and(|(r, _)| r.is_finite()));
        let alone = at(Phase::Pieces, 0, 100 * MIB, 5.0 * MIB as f64, 0);
        view.update(t0 + Duration::from_secs(32), &alone);
        assert_eq!(
            view.smoothed(alone).rate,
            0.0,
            "nobody connected, nothing arrives"
        );
    }

    #[test]
    fn no_bar_before_there_is_something_to_fetch() {
        for phase in [Phase::Owners, Phase::Hashes, Phase::Store, Phase::Failed] {
            assert!(!phase.has_bar(), "{phase:?}");
        }
        assert!(Phase::Pieces.has_bar() && Phase::Verify.has_bar());
    }
}
