//! Which version of a name to fetch: pinning to a root, ranking the versions the tracker
//! lists, and dropping a version nobody can serve for the next one.
//!
//! Anyone can announce anything under any name, so a version is only believed once
//! an owner answered with its layout and hashes that hash to its root. Until then
//! the versions are ranked (most hosts, then most owners, then most complete owners,
//! then the smallest root, so every downloader ranks alike), and a version whose owners all
//! fail, or that nobody serves within the connect and first-byte timeouts, is
//! abandoned for the next. Pieces of two versions are never mixed: a version is
//! only abandoned before any piece of it is stored.

use super::*;

/// Fewest hex digits a root prefix must have: 32 bits, so a prefix is not matched by accident.
pub const MIN_PIN_HEX: usize = 8;

/// A download pinned to one content: a root hash or a unique prefix of its hex.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RootPin {
    hex: String,
}

impl RootPin {
    /// Parses `8..=64` hex digits (either case).
    pub fn parse(text: &str) -> Result<RootPin, String> {
        let hex = text.to_ascii_lowercase();
        if hex.len() < MIN_PIN_HEX || hex.len() > 64 || !hex.bytes().all(|b| b.is_ascii_hexdigit())
        {
            return Err(format!(
                "root {:?} is not {MIN_PIN_HEX} to 64 hex digits",
                crate::node::text::esc(text).to_string()
            ));
        }
        Ok(RootPin { hex })
    }

    /// True if `root` starts with this prefix.
    pub fn matches(&self, root: &RootHash) -> bool {
        crate::hex::hex(root).starts_with(&self.hex)
    }

    /// The prefix as given (lowercase).
    pub fn as_str(&self) -> &str {
        &self.hex
    }
}

/// Splits `NAME@HEX` (a download pinned to a root) from a plain name. Only a suffix of
/// 8 to 64 hex digits counts as a pin, so other names with an `@` stay names.
pub fn split_pin(spec: &str) -> (&str, Option<RootPin>) {
    if let Some((name, tail)) = spec.rsplit_once('@') {
        if !name.is_empty() {
            if let Ok(pin) = RootPin::parse(tail) {
                return (name, Some(pin));
            }
        }
    }
    (spec, None)
}

/// One owner entry of the tracker's latest list, kept to re-rank when a version is dropped.
#[derive(Clone, Debug)]
pub(super) struct Listed {
    pub(super) name: String,
    pub(super) addr: SocketAddr,
    pub(super) info: FileInfo,
    pub(super) complete: bool,
}

impl<S: PartStore> Download<S> {
    /// Pins this download to the content whose root starts with `pin`: no other version
    /// is ever considered.
    pub fn with_pin(mut self, pin: RootPin) -> Self {
        self.pin = Some(pin);
        self
    }

    /// The pin, if any.
    pub fn pin(&self) -> Option<&RootPin> {
        self.pin.as_ref()
    }

    /// True once the tracker sent an owner list (even an empty one).
    pub fn heard_owners(&self) -> bool {
        self.heard_owners
    }

    /// Versions given up on, with why.
    pub fn abandoned(&self) -> &[(FileInfo, String)] {
        &self.abandoned
    }

    /// Keeps the owners a new list names that this download may use.
    pub(super) fn remember_owners(&mut self, owners: &[Owner<'_>]) {
        self.heard_owners = true;
        let max_pieces = self.config.max_pieces;
        if let Some(huge) = owners.iter().find(|o| o.info.piece_count() > max_pieces) {
            log::warn!(
                "{}: ignoring version {}: {} pieces, more than the {max_pieces} a download takes",
                self.name,
                short_hex(&huge.info.root),
                huge.info.piece_count()
            );
        }
        self.listed = owners
            .iter()
            .filter(|o| o.info.piece_count() <= max_pieces)
            .filter(|o| o.node_name != self.my_name && empty_root_holds(&o.info))
            .filter(|o| self.pin.as_ref().is_none_or(|p| p.matches(&o.info.root)))
            .map(|o| Listed {
                name: o.node_name.to_owned(),
                addr: o.addr,
                info: o.info,
                complete: o.complete,
            })
            .collect();
    }

    /// Versions listed and not abandoned, best first: held complete from the most hosts
    /// (IP addresses), then from the most hosts at all, then by the most owners, then the
    /// most complete ones. Hosts come first because one host can announce under as many
    /// node names as it likes.
    pub(super) fn ranked_versions(&self) -> Vec<FileInfo> {
        // Hosts of complete owners count first: downloaders are listed as partial owners
        // before they verify any piece, so honest downloaders tricked into a bait version
        // (hashes that hold, blocks that never do) must not make it look popular.
        let mut hosts: HashMap<FileInfo, HashSet<std::net::IpAddr>> = HashMap::new();
        let mut complete_hosts: HashMap<FileInfo, HashSet<std::net::IpAddr>> = HashMap::new();
        let mut counts: HashMap<FileInfo, (usize, usize, usize, usize)> = HashMap::new();
        for owner in &self.listed {
            if self.abandoned.iter().any(|(a, _)| *a == owner.info) {
                continue;
            }
            hosts.entry(owner.info).or_default().insert(owner.addr.ip());
            if owner.complete {
                complete_hosts
                    .entry(owner.info)
                    .or_default()
                    .insert(owner.addr.ip());
            }
            let entry = counts.entry(owner.info).or_default();
            entry.2 += 1;
            entry.3 += usize::from(owner.complete);
        }
        for (info, entry) in counts.iter_mut() {
            entry.0 = complete_hosts.get(info).map_or(0, HashSet::len);
            entry.1 = hosts.get(info).map_or(0, HashSet::len);
        }
        let mut versions: Vec<(FileInfo, (usize, usize, usize, usize))> =
            counts.into_iter().collect();
        let order = |i: &FileInfo| (i.root, i.size, i.piece_size);
        versions.sort_by(|a, b| b.1.cmp(&a.1).then(order(&a.0).cmp(&order(&b.0))));
        versions.into_iter().map(|(info, _)| info).collect()
    }

    /// Chooses the best version not yet abandoned; false if there is none (yet).
    pub(super) fn choose_version(&mut self, now: Instant) -> bool {
        if let Some(pin) = &self.pin {
            let mut roots: Vec<RootHash> = self.listed.iter().map(|o| o.info.root).collect();
            roots.sort();
            roots.dedup();
            if roots.len() > 1 && self.abandoned.is_empty() {
                // Anyone can announce a root with a given prefix, so refusing here would let
                // them deny the pinned file: every match is tried in turn like any version,
                // and only one whose hashes hold is ever taken.
                let names: Vec<String> = roots.iter().map(|r| crate::hex::hex(r)).collect();
                log::warn!(
                    "{}: root prefix {} matches {}; trying them in turn (a full root avoids this)",
                    self.name,
                    pin.as_str(),
                    names.join(" and ")
                );
            }
        }
        let ranked = self.ranked_versions();
        let Some(&info) = ranked.first() else {
            // The tracker pushes the list again as soon as an owner appears.
            if let State::Owners { starving_since } = &mut self.state {
                starving_since.get_or_insert(now);
            }
            return false;
        };
        let holders = self.listed.iter().filter(|o| o.info == info).count();
        if ranked.len() > 1 || !self.abandoned.is_empty() {
            log::warn!(
                "{}: {} versions are published; taking {} ({} bytes), held by {} of {} owners",
                self.name,
                ranked.len() + self.abandoned.len(),
                short_hex(&info.root),
                info.size,
                holders,
                self.listed.len()
            );
        }
        self.last_delivery = now;
        self.state = if info.size == 0 {
            // No pieces, so no hashes to fetch: the root was checked when listed.
            self.notices.push_back(Notice::NeedStore { info });
            State::Store {
                info,
                hashes: Vec::new(),
            }
        } else {
            State::Hashes(HashFetch {
                info,
                hashes: Vec::new(),
                got: Vec::new(),
                source: None,
                asked: Vec::new(),
                turned_down: Vec::new(),
                turned_down_at: None,
                progress_at: now,
            })
        };
        true
    }

    /// Until a piece of it is verified, a version nobody serves is given up for the next
    /// one, if there is a next one (with one version, the usual timeouts and retries
    /// apply). Past the hashes, while no piece is verified, it is given up once every
    /// owner of it failed or was banned: a publisher whose hashes hold may still never
    /// deliver a piece that matches them.
    pub(super) fn check_version(&mut self, now: Instant, io: &mut dyn PeerIo) {
        let nothing_verified = self.kept_bytes == 0
            && self
                .state
                .fetching()
                .is_none_or(|f| f.picker.have().count() == 0);
        let early = match self.state {
            State::Hashes(_) => true,
            State::Pieces(_) => nothing_verified,
            _ => false,
        };
        if !early {
            return;
        }
        let Some(info) = self.state.info() else {
            return;
        };
        if !self.ranked_versions().iter().any(|v| *v != info) {
            return;
        }
        let all_failed = self.peers.is_empty() && self.candidates.values().all(|c| c.failures > 0);
        let patience = self.config.connect_timeout + self.config.first_byte_timeout;
        let why = if all_failed {
            "every owner of it failed or was banned".to_owned()
        } else if matches!(&self.state, State::Hashes(fetch)
            if now.saturating_duration_since(fetch.progress_at) > patience)
        {
            format!(
                "no owner answered with its layout and hashes for {:.0} s",
                patience.as_secs_f64()
            )
        } else {
            return;
        };
        self.abandon(now, info, why, io);
    }

    /// Drops the current version with everything learned about it and tries the next.
    fn abandon(&mut self, now: Instant, info: FileInfo, why: String, io: &mut dyn PeerIo) {
        log::warn!(
            "{}: giving up on version {} ({why}); trying the next one",
            self.name,
            short_hex(&info.root)
        );
        self.abandoned.push((info, why));
        for (&slot, _) in std::mem::take(&mut self.peers).iter() {
            io.disconnect(slot);
        }
        let mut store = None;
        self.advance(|state| {
            store = state.into_parts().2;
            State::Owners {
                starving_since: None,
            }
        });
        // Nothing of it was verified: its temporary file holds nothing worth a resume.
        if let Some(store) = store {
            if let Err(e) = store.discard() {
                log::warn!("{}: {e}", self.name);
            }
        }
        self.candidates.clear();
        if self.choose_version(now) {
            self.add_candidates(now, io);
        }
    }

    /// Why nothing could be fetched, for the failure line once no version is left.
    pub(super) fn no_version_reason(&self) -> String {
        if self.abandoned.is_empty() {
            return match &self.pin {
                Some(pin) => format!(
                    "no owner of {} with root {}… is known to the tracker",
                    self.name,
                    pin.as_str()
                ),
                None => format!("no owner of {} is known to the tracker", self.name),
            };
        }
        let tried: Vec<String> = self
            .abandoned
            .iter()
            .map(|(info, why)| format!("{}: {why}", short_hex(&info.root)))
            .collect();
        format!(
            "no owner serves any listed version of {} ({})",
            self.name,
            tried.join("; ")
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pins_parse_match_and_split() {
        let root: RootHash = [0xab; 32];
        assert!(RootPin::parse("ABABABAB").unwrap().matches(&root));
        assert!(RootPin::parse(&"ab".repeat(32)).unwrap().matches(&root));
        assert!(!RootPin::parse("abababac").unwrap().matches(&root));
        assert!(RootPin::parse("abab")
            .unwrap_err()
            .contains("8 to 64 hex digits"));
        assert!(RootPin::parse("abababag").is_err());
        assert!(RootPin::parse(&"a".repeat(65)).is_err());
        let (name, pin) = split_pin("video.mkv@abababab");
        assert_eq!(
            (name, pin.map(|p| p.hex)),
            ("video.mkv", Some("abababab".into()))
        );
        assert_eq!(split_pin("me@home.txt").0, "me@home.txt");
        assert_eq!(split_pin("@abababab").0, "@abababab");
        assert!(split_pin("plain").1.is_none());
    }
}
