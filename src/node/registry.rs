//! The registered clients: their dense indexes (a client's number in ballots and on the
//! peer link), their names, and which connection is whose. Indexes only grow; a name maps
//! to one index for ever.

use crate::link::ConnId;
use crate::proto::{ClientId, Seq};
use std::collections::{BTreeMap, HashMap};
use std::time::Instant;

#[derive(Clone, Debug)]
struct ClientRecord {
    id: ClientId,
    conn: Option<ConnId>,
    /// Since when it has had no connection here, once it had one (or once it was noticed
    /// missing).
    gone_since: Option<Instant>,
    /// It asked to leave (told either server, so that a backup taking over knows); a new
    /// hello from it clears this.
    asked_to_leave: bool,
    /// The last seq it said it logged (hello, `Accept`, `LeaseAck`): whether a leaver's
    /// results are held by a member too.
    logged: Seq,
}

/// A client connection as a server knows it. A backup may hear from a client before the
/// primary's `Register` for it arrives; until then it knows only the name.
#[derive(Clone, Debug)]
enum ClientConn {
    Known(u32),
    Unregistered(ClientId),
}

/// What closing a connection meant to the registry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Detached {
    /// Not a client connection.
    NotAClient,
    /// A client connection, but not (or no longer) its client's current one.
    Superseded,
    /// Client `idx` has no connection now.
    Gone(u32),
}

#[derive(Debug, Default)]
pub struct Registry {
    clients: Vec<ClientRecord>,
    index: HashMap<ClientId, u32>,
    conns: BTreeMap<ConnId, ClientConn>,
    /// The connections of `conns` that are `Unregistered`, by name (some may have closed
    /// or been attached since: `conns` says): registering a name looks here, not at every
    /// connection.
    unregistered: HashMap<ClientId, Vec<ConnId>>,
}

impl Registry {
    pub fn len(&self) -> usize {
        self.clients.len()
    }

    pub fn index_of(&self, id: &ClientId) -> Option<u32> {
        self.index.get(id).copied()
    }

    pub fn id(&self, idx: u32) -> &ClientId {
        &self.clients[idx as usize].id
    }

    pub fn ids(&self) -> Vec<ClientId> {
        self.clients.iter().map(|c| c.id.clone()).collect()
    }

    /// The current connection of client `idx`, if it has one.
    pub fn conn(&self, idx: u32) -> Option<ConnId> {
        self.clients.get(idx as usize).and_then(|c| c.conn)
    }

    /// Whether `conn` said a client's hello here (registered or not).
    pub fn is_client_conn(&self, conn: ConnId) -> bool {
        self.conns.contains_key(&conn)
    }

    /// Client connections, registered or not.
    pub fn conn_count(&self) -> usize {
        self.conns.len()
    }

    /// The connections of every connected registered client, in index order.
    pub fn connected_conns(&self) -> Vec<ConnId> {
        self.clients.iter().filter_map(|c| c.conn).collect()
    }

    /// Every connected registered client: `(index, connection)`.
    pub fn connected(&self) -> impl Iterator<Item = (u32, ConnId)> + '_ {
        let clients = self.clients.iter().enumerate();
        clients.filter_map(|(idx, c)| Some((idx as u32, c.conn?)))
    }

    /// Adds a client (idempotent): its index, and whether it is new.
    pub fn register(&mut self, id: ClientId) -> (u32, bool) {
        if let Some(&idx) = self.index.get(&id) {
            return (idx, false);
        }
        let idx = self.clients.len() as u32;
        self.index.insert(id.clone(), idx);
        let mut conn = None;
        // A backup may already hold a connection from this client (the highest id counts,
        // as when every connection was looked at).
        for c in self.unregistered.remove(&id).unwrap_or_default() {
            if let Some(entry) = self.conns.get_mut(&c) {
                if matches!(entry, ClientConn::Unregistered(name) if *name == id) {
                    *entry = ClientConn::Known(idx);
                    conn = conn.max(Some(c));
                }
            }
        }
        self.clients.push(ClientRecord {
            id,
            conn,
            gone_since: None,
            asked_to_leave: false,
            logged: Seq(0),
        });
        (idx, true)
    }

    /// A hello from a client the primary has not registered with us yet.
    pub fn note_unregistered(&mut self, conn: ConnId, id: ClientId) {
        self.unregistered.entry(id.clone()).or_default().push(conn);
        self.conns.insert(conn, ClientConn::Unregistered(id));
    }

    /// The names of the clients that said hello here and were never registered.
    pub fn unregistered_ids(&self) -> Vec<ClientId> {
        self.conns
            .values()
            .filter_map(|c| match c {
                ClientConn::Unregistered(id) => Some(id.clone()),
                ClientConn::Known(_) => None,
            })
            .collect()
    }

    /// Makes `conn` the connection of client `idx`; returns the one it replaces, which the
    /// caller closes. Hellos on two connections may arrive in either order (a restarted
    /// client's old one can come last), and closing the loser makes the client redial if
    /// it was wrong.
    pub fn attach(&mut self, idx: u32, conn: ConnId) -> Option<ConnId> {
        let old = self.clients[idx as usize]
            .conn
            .replace(conn)
            .filter(|&old| old != conn);
        if let Some(old) = old {
            self.conns.remove(&old);
        }
        self.clients[idx as usize].gone_since = None;
        self.conns.insert(conn, ClientConn::Known(idx));
        old
    }

    pub fn detach(&mut self, conn: ConnId, now: Instant) -> Detached {
        let Some(entry) = self.conns.remove(&conn) else {
            return Detached::NotAClient;
        };
        if let ClientConn::Unregistered(id) = &entry {
            if let Some(waiting) = self.unregistered.get_mut(id) {
                waiting.retain(|&c| c != conn);
                if waiting.is_empty() {
                    self.unregistered.remove(id);
                }
            }
        }
        if let ClientConn::Known(idx) = entry {
            let record = &mut self.clients[idx as usize];
            if record.conn == Some(conn) {
                record.conn = None;
                record.gone_since = Some(now);
                return Detached::Gone(idx);
            }
        }
        Detached::Superseded
    }

    /// Client `idx` asked to leave (`true`), or started again (`false`).
    /// Client `idx` said it logged through `seq`. A new process under its name may say
    /// less (its log is the same file), never more than is true.
    pub fn note_logged(&mut self, idx: u32, seq: Seq) {
        self.clients[idx as usize].logged = seq;
    }

    pub fn logged(&self, idx: u32) -> Seq {
        self.clients[idx as usize].logged
    }

    pub fn set_leaving(&mut self, idx: u32, leaving: bool) {
        self.clients[idx as usize].asked_to_leave = leaving;
    }

    pub fn asked_to_leave(&self, idx: u32) -> bool {
        self.clients[idx as usize].asked_to_leave
    }

    /// The clients that asked to leave.
    pub fn leaving(&self) -> impl Iterator<Item = u32> + '_ {
        let all = self.clients.iter().enumerate();
        all.filter(|(_, c)| c.asked_to_leave).map(|(i, _)| i as u32)
    }

    /// Since when client `idx` lost its connection, if it had one and has none now.
    pub fn lost_at(&self, idx: u32) -> Option<Instant> {
        let record = &self.clients[idx as usize];
        record.gone_since.filter(|_| record.conn.is_none())
    }

    /// Since when client `idx` has had no connection: `now` if it never had one here (a
    /// primary that took over first misses it now).
    pub fn gone_since(&mut self, idx: u32, now: Instant) -> Option<Instant> {
        let record = &mut self.clients[idx as usize];
        if record.conn.is_some() {
            return None;
        }
        Some(*record.gone_since.get_or_insert(now))
    }

    pub fn resolve(&self, conn: ConnId) -> Option<u32> {
        match self.conns.get(&conn)? {
            ClientConn::Known(idx) => Some(*idx),
            ClientConn::Unregistered(id) => self.index.get(id).copied(),
        }
    }

    /// Forgets every registration (a joiner installing a snapshot); connections stay.
    pub fn clear(&mut self) {
        self.clients.clear();
        self.index.clear();
    }

    /// The indexes, names and connections agree with one another.
    pub fn check(&self) -> Result<(), String> {
        if self.index.len() != self.clients.len() {
            return Err(format!(
                "{} names for {} clients",
                self.index.len(),
                self.clients.len()
            ));
        }
        for (i, record) in self.clients.iter().enumerate() {
            if self.index.get(&record.id) != Some(&(i as u32)) {
                return Err(format!("client {i} ({}) is not indexed as {i}", record.id));
            }
            if let Some(conn) = record.conn {
                if !matches!(self.conns.get(&conn), Some(ClientConn::Known(k)) if *k == i as u32) {
                    return Err(format!(
                        "client {i}'s connection {conn} is not mapped to it"
                    ));
                }
            }
        }
        for (conn, entry) in &self.conns {
            match entry {
                ClientConn::Known(idx) if *idx as usize >= self.clients.len() => {
                    return Err(format!("connection {conn} names unknown client {idx}"));
                }
                ClientConn::Unregistered(id)
                    if !self
                        .unregistered
                        .get(id)
                        .is_some_and(|cs| cs.contains(conn)) =>
                {
                    return Err(format!(
                        "unregistered connection {conn} ({id}) not found by name"
                    ));
                }
                _ => {}
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn conn(slot: u32) -> ConnId {
        ConnId { slot, gen: 0 }
    }

    #[test]
    fn a_backup_maps_a_connection_once_the_client_is_registered() {
        let mut r = Registry::default();
        let bob = ClientId("bob".into());
        r.note_unregistered(conn(1), bob.clone());
        assert_eq!(r.resolve(conn(1)), None);
        assert_eq!(r.register(ClientId("ann".into())), (0, true));
        assert_eq!(r.register(bob.clone()), (1, true));
        assert_eq!(r.register(bob), (1, false));
        assert_eq!(r.resolve(conn(1)), Some(1));
        assert_eq!(r.conn(1), Some(conn(1)));
        assert_eq!(r.check(), Ok(()));
    }

    #[test]
    fn a_second_connection_supersedes_the_first() {
        let mut r = Registry::default();
        let (idx, _) = r.register(ClientId("ann".into()));
        assert_eq!(r.attach(idx, conn(1)), None);
        assert_eq!(r.attach(idx, conn(1)), None);
        assert_eq!(r.attach(idx, conn(2)), Some(conn(1)));
        let now = Instant::now();
        assert_eq!(r.detach(conn(1), now), Detached::NotAClient);
        assert_eq!(r.detach(conn(2), now), Detached::Gone(idx));
        assert_eq!(r.detach(conn(3), now), Detached::NotAClient);
        assert_eq!(r.gone_since(idx, now), Some(now));
        assert_eq!(r.check(), Ok(()));
    }
}
