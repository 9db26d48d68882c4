//! Text a node shows people: result lines on standard output, names in logs.

use std::fmt;
use std::io::Write as _;

/// Writes one line on standard output, ignoring errors: a reader that went away
/// (`shoal-node … | head`) must not stop a node that is serving others.
/// Printed above any progress bars, so the two never overwrite each other.
pub fn say_line(args: fmt::Arguments<'_>) {
    crate::logging::above_bars(|| {
        let mut out = std::io::stdout().lock();
        let _ = writeln!(out, "{args}");
    });
}

/// As [`say_line`], on standard error: a failure line that must not fail in turn.
pub fn say_err_line(args: fmt::Arguments<'_>) {
    crate::logging::above_bars(|| {
        let mut out = std::io::stderr().lock();
        let _ = writeln!(out, "{args}");
    });
}

/// `println!` that never panics: see [`say_line`].
macro_rules! say {
    ($($arg:tt)*) => {
        $crate::node::text::say_line(format_args!($($arg)*))
    };
}
pub(crate) use say;

/// `eprintln!` that never panics: see [`say_err_line`].
macro_rules! say_err {
    ($($arg:tt)*) => {
        $crate::node::text::say_err_line(format_args!($($arg)*))
    };
}
pub(crate) use say_err;

pub use crate::wire::Escaped;

/// Shorthand for [`Escaped`].
pub fn esc(name: &str) -> Escaped<'_> {
    Escaped(name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn control_characters_are_escaped_and_plain_names_kept() {
        assert_eq!(esc("video.mkv").to_string(), "video.mkv");
        assert_eq!(esc("été ü.bin").to_string(), "été ü.bin");
        assert_eq!(
            esc("a\nINFO fake line\r\x1b[2J\0b").to_string(),
            "a\\nINFO fake line\\r\\u{1b}[2J\\0b"
        );
        assert_eq!(esc("back\\slash").to_string(), "back\\slash");
        assert!(!esc("\u{7f}\u{85}x")
            .to_string()
            .chars()
            .any(char::is_control));
    }
}
