//! The commands a node reads from standard input (heritage forms and short forms).

use super::download::{split_pin, RootPin};

/// One parsed stdin command.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Command {
    /// Share a file of the node's folder.
    Upload(String),
    /// Fetch a file from the network (only the content whose root starts with the pin, if given).
    Download(String, Option<RootPin>),
    /// Print every transfer.
    Status,
    /// Print the command list.
    Help,
    /// Leave the network and stop.
    Exit,
}

/// What `help` prints.
pub const HELP: &str = "commands:
  upload FILE                        share FILE from this node's folder
  download FILE                      fetch FILE from its owners into this node's folder
  download FILE --root HEX           fetch only the content with this root (8 to 64 hex digits
                                     of it, as `sharing` prints); FILE@HEX says the same
  torrent -setMode upload FILE       same as upload FILE
  torrent -setMode download FILE     same as download FILE
  status                             show every transfer
  help                               show this list
  exit | torrent exit                leave the network and stop";

/// Parses one line; `Ok(None)` for a blank line, `Err` with a message for anything else unknown.
pub fn parse(line: &str) -> Result<Option<Command>, String> {
    let words: Vec<&str> = line.split_whitespace().collect();
    let command = match words.as_slice() {
        [] => return Ok(None),
        ["upload", file] | ["torrent", "-setMode", "upload", file] => {
            Command::Upload((*file).to_owned())
        }
        ["download", file] | ["torrent", "-setMode", "download", file] => {
            let (name, pin) = split_pin(file);
            Command::Download(name.to_owned(), pin)
        }
        ["download", file, "--root", hex]
        | ["torrent", "-setMode", "download", file, "--root", hex] => {
            Command::Download((*file).to_owned(), Some(RootPin::parse(hex)?))
        }
        ["status"] => Command::Status,
        ["help"] | ["?"] => Command::Help,
        ["exit"] | ["quit"] | ["torrent", "exit"] => Command::Exit,
        [verb, ..] => return Err(format!("unknown command {verb:?} (type help for the list)")),
    };
    Ok(Some(command))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn heritage_and_short_forms_parse_alike() {
        assert_eq!(
            parse("torrent -setMode upload a.bin"),
            Ok(Some(Command::Upload("a.bin".into())))
        );
        assert_eq!(
            parse("  upload a.bin "),
            Ok(Some(Command::Upload("a.bin".into())))
        );
        assert_eq!(
            parse("torrent -setMode download b"),
            Ok(Some(Command::Download("b".into(), None)))
        );
        assert_eq!(
            parse("download b"),
            Ok(Some(Command::Download("b".into(), None)))
        );
        assert_eq!(parse("torrent exit"), Ok(Some(Command::Exit)));
        assert_eq!(parse("exit"), Ok(Some(Command::Exit)));
        assert_eq!(parse("status"), Ok(Some(Command::Status)));
        assert_eq!(parse(""), Ok(None));
    }

    #[test]
    fn downloads_pin_a_root_two_ways() {
        let pin = RootPin::parse("0123abcd").ok();
        assert_eq!(
            parse("download b --root 0123ABCD"),
            Ok(Some(Command::Download("b".into(), pin.clone())))
        );
        assert_eq!(
            parse("download b@0123abcd"),
            Ok(Some(Command::Download("b".into(), pin)))
        );
        let err = parse("download b --root 12").unwrap_err();
        assert!(err.contains("8 to 64 hex digits"), "{err}");
    }

    #[test]
    fn unknown_or_malformed_commands_say_so() {
        assert!(parse("fly away").unwrap_err().contains("unknown command"));
        assert!(parse("upload").is_err());
        assert!(parse("upload a b").is_err());
    }
}
