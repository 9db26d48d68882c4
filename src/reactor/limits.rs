//! Connection caps: inbound and outbound counted apart, inbound also per peer IP.
//!
//! Counting them apart means a flood of inbound sockets can never stop a
//! process's own outbound connects (a node's downloads, its tracker link).
//! When the inbound table is full, a newcomer from an IP holding fewer
//! connections takes the place of the newest connection of the IP holding the
//! most, so one host (or a few) cannot lock everyone else out by opening
//! sockets and sitting on them.

use std::collections::HashMap;
use std::net::IpAddr;

use super::Config;

/// What to do with a connection waiting to be accepted.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Admit {
    /// There is room.
    Accept,
    /// Room is made by closing this slot's connection first.
    Evict(usize),
    /// Refused, for this reason (logged).
    Refuse(&'static str),
}

/// How a counted slot was opened.
#[derive(Clone, Copy, Debug)]
enum Dir {
    Out,
    In { ip: IpAddr, seq: u64 },
}

/// Counts of live slots (closing ones included, until their socket is gone).
#[derive(Debug, Default)]
pub(crate) struct ConnLimits {
    inbound: usize,
    outbound: usize,
    per_ip: HashMap<IpAddr, usize>,
    slots: HashMap<usize, Dir>,
    next_seq: u64,
}

impl ConnLimits {
    /// May another outbound connect start?
    pub(crate) fn outbound_room(&self, config: &Config) -> bool {
        self.outbound < config.max_outbound
    }

    /// Decides on an inbound connection from `ip`.
    pub(crate) fn admit(&self, ip: IpAddr, config: &Config) -> Admit {
        let from_ip = self.per_ip.get(&ip).copied().unwrap_or(0);
        if from_ip >= config.max_inbound_per_ip {
            return Admit::Refuse("per-IP connection limit");
        }
        if self.inbound < config.max_inbound {
            return Admit::Accept;
        }
        // Full: the heaviest IP gives up its newest connection, if it holds more than the
        // newcomer's IP would after this accept.
        let Some((&heavy, &count)) = self.per_ip.iter().max_by_key(|(_, &n)| n) else {
            return Admit::Refuse("connection limit");
        };
        if count <= from_ip + 1 {
            return Admit::Refuse("connection limit");
        }
        let newest = self
            .slots
            .iter()
            .filter_map(|(&slot, dir)| match *dir {
                Dir::In { ip, seq } if ip == heavy => Some((seq, slot)),
                _ => None,
            })
            .max();
        match newest {
            Some((_, slot)) => Admit::Evict(slot),
            None => Admit::Refuse("connection limit"),
        }
    }

    /// Slot `slot` now holds an accepted connection from `ip`.
    pub(crate) fn add_inbound(&mut self, slot: usize, ip: IpAddr) {
        self.next_seq += 1;
        let dir = Dir::In {
            ip,
            seq: self.next_seq,
        };
        if let Some(old) = self.slots.insert(slot, dir) {
            self.uncount(old);
        }
        self.inbound += 1;
        *self.per_ip.entry(ip).or_default() += 1;
    }

    /// Slot `slot` now holds an outbound connection.
    pub(crate) fn add_outbound(&mut self, slot: usize) {
        if let Some(old) = self.slots.insert(slot, Dir::Out) {
            self.uncount(old);
        }
        self.outbound += 1;
    }

    /// Slot `slot` was freed.
    pub(crate) fn remove(&mut self, slot: usize) {
        if let Some(dir) = self.slots.remove(&slot) {
            self.uncount(dir);
        }
    }

    /// (inbound, outbound) counted now.
    #[cfg(test)]
    fn counts(&self) -> (usize, usize) {
        (self.inbound, self.outbound)
    }

    fn uncount(&mut self, dir: Dir) {
        match dir {
            Dir::Out => self.outbound -= 1,
            Dir::In { ip, .. } => {
                self.inbound -= 1;
                if let Some(n) = self.per_ip.get_mut(&ip) {
                    *n -= 1;
                    if *n == 0 {
                        self.per_ip.remove(&ip);
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::Ipv4Addr;

    fn ip(last: u8) -> IpAddr {
        IpAddr::V4(Ipv4Addr::new(10, 0, 0, last))
    }

    fn config() -> Config {
        Config {
            max_inbound: 4,
            max_outbound: 2,
            max_inbound_per_ip: 3,
            ..Config::default()
        }
    }

    #[test]
    fn one_ip_is_capped_and_cannot_lock_others_out() {
        let (config, mut limits) = (config(), ConnLimits::default());
        for slot in 0..3 {
            assert_eq!(limits.admit(ip(1), &config), Admit::Accept);
            limits.add_inbound(slot, ip(1));
        }
        assert_eq!(
            limits.admit(ip(1), &config),
            Admit::Refuse("per-IP connection limit")
        );
        assert_eq!(limits.admit(ip(2), &config), Admit::Accept);
        limits.add_inbound(3, ip(2));
        // Full: ip 3 takes the newest place of ip 1, which holds the most.
        assert_eq!(limits.admit(ip(3), &config), Admit::Evict(2));
        limits.remove(2);
        limits.add_inbound(2, ip(3));
        // Now every IP holds at most two: nobody is evicted for a fourth IP's second conn.
        limits.add_inbound(9, ip(4));
        assert_eq!(limits.counts(), (5, 0));
        limits.remove(9);
        assert_eq!(
            limits.admit(ip(2), &config),
            Admit::Refuse("connection limit")
        );
    }

    #[test]
    fn outbound_is_counted_apart() {
        let (config, mut limits) = (config(), ConnLimits::default());
        for slot in 0..4 {
            limits.add_inbound(slot, ip(slot as u8));
        }
        assert!(
            limits.outbound_room(&config),
            "a full inbound table leaves outbound room"
        );
        limits.add_outbound(10);
        limits.add_outbound(11);
        assert!(!limits.outbound_room(&config));
        limits.remove(10);
        assert!(limits.outbound_room(&config));
        assert_eq!(limits.counts(), (4, 1));
    }
}
