//! Names and secrets: `Hello` claims or reclaims a name, `Synced` ends a node's restatement.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::time::Instant;

use super::{node_cost, refuse, NodeEntry, Outbox, SessionId, TrackerState};
use crate::wire::{ErrorCode, NodeSecret};

impl TrackerState {
    /// `Hello`: a new name is taken; a known one (connected or in grace) only with its secret.
    pub(super) fn hello(
        &mut self,
        now: Instant,
        session: SessionId,
        name: &str,
        port: u16,
        secret: &NodeSecret,
        out: &mut dyn Outbox,
    ) {
        let Some(peer_ip) = self.sessions.get(&session).map(|s| s.peer_ip) else {
            return;
        };
        let addr = SocketAddr::new(peer_ip, port);
        let secret_hash = *blake3::hash(secret).as_bytes();
        if let Some(existing) = self.nodes.get(name) {
            if existing.secret_hash != secret_hash {
                log::warn!("{peer_ip} said hello as {name} without its secret: refused");
                let reason = format!("node name {name} is held by another node");
                refuse(out, session, ErrorCode::Refused, &reason);
                out.close(session);
                return;
            }
            self.reclaim(now, session, name, addr, out);
        } else {
            let cost = node_cost(name);
            if let Err(why) = self.check_budget(name, 0, cost) {
                refuse(out, session, ErrorCode::Refused, &why);
                out.close(session);
                return;
            }
            self.total_bytes += cost;
            self.nodes.insert(
                name.to_owned(),
                NodeEntry {
                    addr,
                    session: Some(session),
                    secret_hash,
                    expires: None,
                    grace_serial: 0,
                    owns: BTreeSet::new(),
                    own_bytes: cost,
                },
            );
        }
        if let Some(sess) = self.sessions.get_mut(&session) {
            sess.node = Some(name.to_owned());
        }
        log::info!("node {name} connected, serving at {addr}");
    }

    /// The secret matched: the node takes its name back, with its entries, at its new address.
    fn reclaim(
        &mut self,
        now: Instant,
        session: SessionId,
        name: &str,
        addr: SocketAddr,
        out: &mut dyn Outbox,
    ) {
        let Some(existing) = self.nodes.get_mut(name) else {
            return;
        };
        let old = existing.session.replace(session);
        // Cancels the grace deadline: a popped deadline of a connected node is stale.
        existing.expires = None;
        let moved = existing.addr != addr;
        existing.addr = addr;
        let owned: Vec<String> = existing.owns.iter().cloned().collect();
        if let Some(old) = old {
            log::info!("node {name} reconnected; closing its old connection");
            if let Some(s) = self.sessions.get_mut(&old) {
                s.node = None;
            }
            out.close(old);
        }
        // Until `Synced`, what the node lists is what it held before; it restates the rest.
        for file in &owned {
            if let Some(f) = self.files.get_mut(file) {
                for o in f.owners.iter_mut().filter(|o| o.node == name) {
                    o.confirmed = false;
                }
            }
            if moved {
                self.mark_dirty(now, file);
            }
        }
    }

    /// `Synced`: the node has stated everything it holds; what it did not restate goes.
    pub(super) fn synced(&mut self, now: Instant, node: &str) {
        let Some(owned) = self
            .nodes
            .get(node)
            .map(|n| n.owns.iter().cloned().collect::<Vec<String>>())
        else {
            return;
        };
        for file in owned {
            let stale: Vec<_> = self
                .files
                .get(&file)
                .map(|f| {
                    f.owners
                        .iter()
                        .filter(|o| o.node == node && !o.confirmed)
                        .map(|o| o.info.root)
                        .collect()
                })
                .unwrap_or_default();
            let mut changed = false;
            for root in stale {
                log::info!("node {node} no longer holds this version of {file}: dropped");
                changed |= self.remove_owner(node, &file, Some(&root));
            }
            if changed {
                self.mark_dirty(now, &file);
                self.log_table(&file);
            }
        }
    }
}
