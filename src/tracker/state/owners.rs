//! Owner entries: `Have` under every bound, eviction of the most crowded host, removal.

use std::collections::HashMap;
use std::net::IpAddr;
use std::time::Instant;

use super::{owner_cost, refuse, Outbox, OwnerEntry, SessionId, TrackerState};
use crate::wire::{ErrorCode, FileInfo, RootHash};

impl TrackerState {
    /// `Have`: adds or updates `node`'s entry for (`name`, `info.root`), or refuses with why.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn have(
        &mut self,
        now: Instant,
        session: SessionId,
        node: &str,
        name: &str,
        info: FileInfo,
        complete: bool,
        out: &mut dyn Outbox,
    ) {
        let Some(entry) = self.nodes.get(node) else {
            return;
        };
        let host = entry.addr.ip();
        if let Some(existing) = self.files.get_mut(name).and_then(|f| {
            f.owners
                .iter_mut()
                .find(|o| o.node == node && o.info.root == info.root)
        }) {
            existing.confirmed = true;
            if existing.info == info && existing.complete == complete {
                return;
            }
            existing.info = info;
            existing.complete = complete;
        } else {
            if let Err(why) = self.admit(session, node, host, name, &info.root) {
                log::debug!("{node}: have {name} refused: {why}");
                refuse(out, session, ErrorCode::Refused, &why);
                return;
            }
            let cost = owner_cost(name);
            self.total_bytes += cost;
            if let Some(entry) = self.nodes.get_mut(node) {
                entry.own_bytes += cost;
                entry.owns.insert(name.to_owned());
            }
            self.files
                .entry(name.to_owned())
                .or_default()
                .owners
                .push(OwnerEntry {
                    node: node.to_owned(),
                    info,
                    complete,
                    confirmed: true,
                });
        }
        self.mark_dirty(now, name);
        self.log_table(name);
    }

    /// Makes room for a new entry of `node` (at `host`) for `name`, evicting the entry of
    /// the most crowded host if the file is full; `Err` says which bound refuses it.
    fn admit(
        &mut self,
        session: SessionId,
        node: &str,
        host: IpAddr,
        name: &str,
        root: &RootHash,
    ) -> Result<(), String> {
        let limits = &self.limits;
        let Some(entry) = self.nodes.get(node) else {
            return Err("unknown node".into());
        };
        if !entry.owns.contains(name) && entry.owns.len() >= limits.max_files_per_node {
            return Err("node owns too many files".into());
        }
        if !self.files.contains_key(name) && self.files.len() >= limits.max_files {
            return Err("tracker file table is full".into());
        }
        let watches = self.sessions.get(&session).map_or(0, |s| s.watch_bytes);
        self.check_budget(node, entry.own_bytes + watches, owner_cost(name))?;
        let Some(file) = self.files.get(name) else {
            return Ok(());
        };
        let mut per_host: HashMap<IpAddr, usize> = HashMap::new();
        let mut host_roots: Vec<&RootHash> = Vec::new();
        for o in &file.owners {
            let Some(ip) = self.nodes.get(&o.node).map(|n| n.addr.ip()) else {
                continue;
            };
            *per_host.entry(ip).or_default() += 1;
            if ip == host && !host_roots.contains(&&o.info.root) {
                host_roots.push(&o.info.root);
            }
        }
        if !host_roots.contains(&root) && host_roots.len() >= limits.max_versions_per_host {
            return Err(format!(
                "{host} already publishes {} versions of {name}",
                limits.max_versions_per_host
            ));
        }
        let mine = per_host.get(&host).copied().unwrap_or(0);
        if mine >= limits.max_owners_per_host {
            return Err(format!(
                "{host} already has {} owner entries for {name}",
                limits.max_owners_per_host
            ));
        }
        if file.owners.len() < limits.max_owners_per_file {
            return Ok(());
        }
        // Full: a host with fewer entries than the most crowded one takes one of its places,
        // so no host can keep another's honest owners out by filling the list.
        let crowded = per_host
            .iter()
            .max_by_key(|(ip, n)| (**n, **ip))
            .map(|(ip, n)| (*ip, *n));
        match crowded {
            Some((ip, most)) if most > mine => {
                self.evict_one(name, ip);
                Ok(())
            }
            _ => Err("too many owners for this file".into()),
        }
    }

    /// Removes the newest entry of `name` held by a node at `ip` (its watchers are told).
    fn evict_one(&mut self, name: &str, ip: IpAddr) {
        let Some(file) = self.files.get(name) else {
            return;
        };
        let victim = file
            .owners
            .iter()
            .rposition(|o| self.nodes.get(&o.node).is_some_and(|n| n.addr.ip() == ip));
        if let Some(at) = victim {
            let o = &file.owners[at];
            let (node, root) = (o.node.clone(), o.info.root);
            log::info!("{name}: owner list full; evicting {node} ({ip} holds the most entries)");
            self.remove_owner(&node, name, Some(&root));
        }
    }

    /// Removes `node`'s entries for `name` (one version, or all); true if any went.
    pub(super) fn remove_owner(&mut self, node: &str, name: &str, root: Option<&RootHash>) -> bool {
        let Some(file) = self.files.get_mut(name) else {
            return false;
        };
        let before = file.owners.len();
        file.owners
            .retain(|o| !(o.node == node && root.is_none_or(|r| *r == o.info.root)));
        let removed = before - file.owners.len();
        let still_owns = file.owners.iter().any(|o| o.node == node);
        let refund = removed * owner_cost(name);
        self.total_bytes -= refund;
        if let Some(entry) = self.nodes.get_mut(node) {
            entry.own_bytes -= refund;
            if !still_owns {
                entry.owns.remove(name);
            }
        }
        self.drop_empty_files(std::iter::once(&name.to_owned()));
        removed > 0
    }

    /// Takes `node` off every owner list now.
    pub(super) fn forget_node(&mut self, now: Instant, node: &str) {
        let Some(entry) = self.nodes.remove(node) else {
            return;
        };
        self.total_bytes -= entry.own_bytes;
        for name in &entry.owns {
            if let Some(file) = self.files.get_mut(name) {
                file.owners.retain(|o| o.node != node);
            }
            self.mark_dirty(now, name);
            self.log_table(name);
        }
        self.drop_empty_files(entry.owns.iter());
        if let Some(sess) = entry.session.and_then(|s| self.sessions.get_mut(&s)) {
            sess.node = None;
        }
    }
}
