//! The scripted IMAP server's state: what outlives a connection (the
//! mailboxes, the faults still to fire, every command received, the stall
//! points reached), behind one lock that the connections and the test share.

use std::collections::BTreeMap;
use std::sync::atomic::AtomicBool;
use std::sync::{Condvar, Mutex, MutexGuard};

use super::{Fault, Point, Stored, Trigger};

#[derive(Clone, Debug)]
pub(super) struct Mbox {
    pub(super) uidvalidity: u32,
    pub(super) uidnext: u32,
    pub(super) messages: Vec<Stored>,
}

pub(super) struct State {
    pub(super) caps: Vec<String>,
    pub(super) user: String,
    pub(super) password: String,
    pub(super) append_limit: Option<usize>,
    pub(super) mailboxes: BTreeMap<String, Mbox>,
    pub(super) next_uidvalidity: u32,
    pub(super) faults: Vec<(Trigger, Fault)>,
    pub(super) appends_seen: u32,
    pub(super) commands: Vec<String>,
    pub(super) reached: Vec<Point>,
    pub(super) released: bool,
    pub(super) connections: u32,
    /// Connections whose thread still runs.
    pub(super) active: u32,
    /// Closing every new connection at once, as a server that is down.
    pub(super) down: bool,
}

pub(super) struct Shared {
    pub(super) state: Mutex<State>,
    pub(super) cond: Condvar,
    pub(super) stop: AtomicBool,
}

impl Shared {
    pub(super) fn lock(&self) -> MutexGuard<'_, State> {
        // A panicking connection thread must not take the test down with a
        // poisoned lock; the state stays usable.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl State {
    pub(super) fn take_uidvalidity(&mut self) -> u32 {
        let v = self.next_uidvalidity;
        self.next_uidvalidity += 1000;
        v
    }

    pub(super) fn create(&mut self, name: &str) -> bool {
        let key = mailbox_key(name);
        if self.mailboxes.contains_key(&key) {
            return false;
        }
        let uidvalidity = self.take_uidvalidity();
        self.mailboxes.insert(
            key,
            Mbox {
                uidvalidity,
                uidnext: 1,
                messages: Vec::new(),
            },
        );
        true
    }

    pub(super) fn take_fault(&mut self, trigger: &Trigger) -> Option<Fault> {
        let i = self.faults.iter().position(|(t, _)| t == trigger)?;
        Some(self.faults.remove(i).1)
    }

    pub(super) fn caps_line(&self) -> String {
        self.caps.join(" ")
    }
}

/// INBOX is case-insensitive (RFC 3501 5.1); other names are kept as sent.
pub(super) fn mailbox_key(name: &str) -> String {
    if name.eq_ignore_ascii_case("INBOX") {
        "INBOX".to_owned()
    } else {
        name.to_owned()
    }
}
