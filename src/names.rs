//! The one rule for names, file names and node names alike: a leaf module that `wire`
//! and `storage` both use (and that uses nothing of the crate), so the network and the
//! folder can never disagree on what a name is.

/// Longest name accepted, in bytes (the usual file-system limit; the wire's u8 length fits it).
pub const MAX_NAME_LEN: usize = 255;

/// Checks `name` is one plain path component; the error says why not.
///
/// Non-empty, at most [`MAX_NAME_LEN`] bytes, not `.` or `..`, and no `/`, `\`, NUL or
/// control character: a name received from the network is never a path and cannot
/// forge log lines. Each layer wraps the reason in its own error.
pub fn check_name(name: &str) -> Result<(), &'static str> {
    if name.is_empty() {
        return Err("empty");
    }
    if name.len() > MAX_NAME_LEN {
        return Err("longer than 255 bytes");
    }
    if name == "." || name == ".." {
        return Err("`.` or `..`");
    }
    for c in name.chars() {
        match c {
            '/' => return Err("contains '/'"),
            '\\' => return Err("contains '\\'"),
            '\0' => return Err("contains NUL"),
            c if c.is_control() => return Err("contains a control character"),
            _ => {}
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_names_pass_and_paths_do_not() {
        for good in [
            "a",
            "video.mkv",
            "...",
            ".hidden",
            "été ü.bin",
            "me@home.txt",
        ] {
            assert_eq!(check_name(good), Ok(()), "{good:?}");
        }
        assert_eq!(check_name(&"é".repeat(127)), Ok(()));
        for (bad, why) in [
            ("", "empty"),
            (".", "`.` or `..`"),
            ("..", "`.` or `..`"),
            ("a/b", "contains '/'"),
            ("..\\x", "contains '\\'"),
            ("a\0", "contains NUL"),
            ("a\x1b[31m", "contains a control character"),
            ("a\u{85}", "contains a control character"),
        ] {
            assert_eq!(check_name(bad), Err(why), "{bad:?}");
        }
        // 128 two-byte characters: 128 chars but 256 bytes.
        assert_eq!(check_name(&"é".repeat(128)), Err("longer than 255 bytes"));
    }
}
