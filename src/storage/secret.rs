//! A node's secret: 32 random bytes created on its first start and kept in its folder.
//!
//! The tracker gives a node name back only to a `Hello` carrying the same secret, so a
//! stranger cannot take over a name (and its owner entries) by saying it. The file is
//! hidden (its name starts with '.', which [`check_name`](super::check_name) refuses, so
//! it can never be uploaded), readable by its owner only, and holds the secret in hex so a
//! node's folder can be moved to another machine by copying it.

use std::fs::{self, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::OpenOptionsExt;

use super::{io_err, own_err, Folder, StorageError};

/// The secret file's name inside a node's folder.
pub const SECRET_FILE: &str = ".shoal-node-secret";

impl Folder {
    /// This node's secret: read from the folder, or created there on first use.
    pub fn node_secret(&self) -> Result<[u8; 32], StorageError> {
        let path = self.dir().join(SECRET_FILE);
        let shown = path.display().to_string();
        match fs::read_to_string(&path) {
            Ok(text) => parse_secret(text.trim()).ok_or_else(|| {
                own_err(
                    &shown,
                    "read node secret",
                    io::ErrorKind::InvalidData,
                    "not 64 hex digits; remove it to make a new one (the tracker then \
                     refuses this name until its old entries expire)"
                        .to_string(),
                )
            }),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                let secret = fresh_secret().map_err(|e| io_err("/dev/urandom", "read", e))?;
                let mut file = OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .mode(0o600)
                    .open(&path)
                    .map_err(|e| io_err(&shown, "create node secret", e))?;
                let hex: String = secret.iter().map(|b| format!("{b:02x}")).collect();
                file.write_all(format!("{hex}\n").as_bytes())
                    .and_then(|()| file.sync_all())
                    .map_err(|e| io_err(&shown, "write node secret", e))?;
                Ok(secret)
            }
            Err(e) => Err(io_err(&shown, "read node secret", e)),
        }
    }
}

fn fresh_secret() -> io::Result<[u8; 32]> {
    let mut secret = [0; 32];
    fs::File::open("/dev/urandom")?.read_exact(&mut secret)?;
    Ok(secret)
}

fn parse_secret(hex: &str) -> Option<[u8; 32]> {
    if hex.len() != 64 || !hex.is_ascii() {
        return None;
    }
    let mut secret = [0; 32];
    for (i, byte) in secret.iter_mut().enumerate() {
        *byte = u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).ok()?;
    }
    Some(secret)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_secret_is_created_once_and_kept() {
        let dir = tempfile::tempdir().expect("tempdir");
        let folder = Folder::open(dir.path()).expect("folder");
        let first = folder.node_secret().expect("created");
        let again = folder.node_secret().expect("read back");
        assert_eq!(first, again);
        assert_ne!(first, [0; 32]);
        let other = tempfile::tempdir().expect("tempdir");
        let other = Folder::open(other.path()).expect("folder");
        assert_ne!(other.node_secret().expect("created"), first);
        assert!(
            crate::storage::check_name(SECRET_FILE).is_err(),
            "never uploadable"
        );
    }

    #[test]
    fn a_damaged_secret_is_a_clear_error() {
        let dir = tempfile::tempdir().expect("tempdir");
        fs::write(dir.path().join(SECRET_FILE), "not hex\n").expect("write");
        let folder = Folder::open(dir.path()).expect("folder");
        let err = folder.node_secret().expect_err("refused").to_string();
        assert!(err.contains("64 hex digits"), "{err}");
    }
}
