//! A scripted IMAP server for the fault tests of popsync's IMAP target
//! (`tests/imap_faults.rs`, `tests/imap_kill.rs`): plain TCP on 127.0.0.1 (popsync talks to it
//! with `tls = "none"`, `allow_plaintext = true`), mailboxes in memory.
//!
//! It speaks the part of IMAP4rev1 an APPEND client needs, honestly where it
//! does not misbehave on purpose: a greeting with CAPABILITY, CAPABILITY,
//! LOGIN, AUTHENTICATE PLAIN (with SASL-IR or after "+ ") and LOGIN, SELECT,
//! EXAMINE, STATUS, LIST, CREATE, APPEND with synchronising `{n}` and (when
//! LITERAL+ is offered) non-synchronising `{n+}` literals, MULTIAPPEND (when
//! offered; a multi-message APPEND stores all or nothing), APPENDUID (when
//! UIDPLUS is offered), SEARCH / UID SEARCH (ALL, HEADER, SUBJECT, FROM, TO,
//! BODY, TEXT, UID, sequence sets, OR, NOT, parentheses, flags, CHARSET),
//! FETCH / UID FETCH of UID, FLAGS, INTERNALDATE, RFC822.SIZE and body
//! sections, ID, ENABLE, NAMESPACE, NOOP, CHECK, CLOSE, UNSELECT, LOGOUT.
//! A command it does not know is answered BAD and recorded, so a test sees
//! it. A message bigger than APPENDLIMIT (when set) is refused
//! `NO [TOOBIG]`; APPEND to a missing mailbox `NO [TRYCREATE]` (before the
//! "+" of a synchronising literal, as Dovecot does).
//!
//! On cue (`fault`) it answers an APPEND `NO [...]`, drops the connection
//! (after the APPEND line or in the middle of the literal), or stalls at a
//! named `Point` and tells the test it got there (`wait_reached`) so the
//! test can SIGKILL popsync at exactly that instant. Its state (mailboxes,
//! remaining faults, the commands it was sent) outlives a connection, so a
//! test can break a run, heal the server and run again; `change_uidvalidity`
//! renumbers a mailbox between runs as a server that rebuilt its index does.
//!
//! The server's parts, each a file here: this one is its API (the builder,
//! `Trigger`, `Point`, `Fault`, what it recorded); `state.rs` the state that
//! outlives a connection (mailboxes, faults, records); `conn.rs` the
//! connection loop (reading lines and literals, dispatching commands, LOGIN
//! and AUTHENTICATE); `append.rs` APPEND, step by step, where most faults
//! strike; `mailbox.rs` SELECT, EXAMINE, STATUS, LIST, SEARCH and FETCH;
//! `parse.rs` commands to tokens, literals, what is recorded; `search.rs`
//! search keys and sequence sets; `message.rs` a stored message's header
//! fields, body and FETCH items.
//!
//! ```ignore
//! let srv = FaultServer::builder().literal_plus().start();
//! srv.fault(Trigger::Append(2), Fault::Stall(Point::AfterLiteral));
//! // spawn popsync, srv.wait_reached(Point::AfterLiteral, ..), kill it
//! srv.release();
//! assert_eq!(srv.messages("INBOX").len(), 2);
//! ```
#![allow(dead_code)]

mod append;
mod conn;
mod mailbox;
mod message;
mod parse;
// For `imap_faults.rs`, which checks the harness itself.
#[allow(unused_imports)]
pub use parse::literal_at_end;
mod search;
mod state;

use std::collections::BTreeMap;
use std::net::TcpListener;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use conn::accept_loop;
use state::{Shared, State, mailbox_key};

/// Where a fault fires.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Trigger {
    /// The n-th APPEND command (1-based, counted over the server's lifetime,
    /// all connections together). Without MULTIAPPEND one command is one
    /// message, so this is "the n-th message popsync APPENDs".
    Append(u32),
    /// The next command with this verb (upper case; "UID SEARCH" and the
    /// like for UID commands), e.g. "SELECT", "UID SEARCH", "LOGIN".
    Command(String),
}

/// A named instant at which the server stalls (`Fault::Stall`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Point {
    /// The APPEND command line has arrived; no "+" sent, no literal read.
    AfterAppendLine,
    /// Half of the APPEND's first message literal has been read.
    MidLiteral,
    /// The whole APPEND command has been read and its messages stored, but
    /// the tagged OK is not sent: the message is there, the client cannot
    /// know it.
    AfterLiteral,
    /// The tagged OK of the APPEND has been sent; the server reads nothing
    /// more.
    AfterTaggedOk,
    /// A `Trigger::Command` command has arrived and is not answered.
    BeforeReply,
}

/// What the server does when a trigger fires (each fault fires once).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Fault {
    /// Answer the command `TAG NO <text>` (e.g. "[OVERQUOTA] Quota
    /// exceeded"); an APPEND stores nothing. For APPEND the whole command
    /// (literals included) is read first.
    No(String),
    /// Close the connection: for APPEND right after its command line, for
    /// another command on its arrival.
    Drop,
    /// Close the connection in the middle of the APPEND's first literal.
    DropMidLiteral,
    /// Store the APPEND's messages, then close the connection without the
    /// tagged OK (a server that crashed right after committing).
    DropBeforeOk,
    /// Stop at `Point` until `release` (or the server is dropped), then go on.
    Stall(Point),
}

/// A message in a mailbox of the server.
#[derive(Clone, Debug)]
pub struct Stored {
    pub uid: u32,
    pub flags: Vec<String>,
    /// The date-time argument of the APPEND, as sent (None: not given).
    pub internaldate: Option<String>,
    pub bytes: Vec<u8>,
}

/// Configures a server before `start`.
pub struct Builder {
    caps: Vec<String>,
    user: String,
    password: String,
    append_limit: Option<usize>,
    mailboxes: Vec<String>,
}

impl Builder {
    /// Offer LITERAL+ (non-synchronising literals, RFC 7888).
    pub fn literal_plus(mut self) -> Self {
        self.caps.push("LITERAL+".into());
        self
    }
    /// Offer MULTIAPPEND (RFC 3502).
    pub fn multiappend(mut self) -> Self {
        self.caps.push("MULTIAPPEND".into());
        self
    }
    /// Do not offer UIDPLUS (so no APPENDUID).
    pub fn without_uidplus(mut self) -> Self {
        self.caps.retain(|c| c != "UIDPLUS");
        self
    }
    /// Offer `APPENDLIMIT=n` (RFC 7889) and refuse bigger messages.
    pub fn append_limit(mut self, n: usize) -> Self {
        self.caps.push(format!("APPENDLIMIT={n}"));
        self.append_limit = Some(n);
        self
    }
    /// The one account's user name and password (default bob / imap-pw).
    pub fn credentials(mut self, user: &str, password: &str) -> Self {
        user.clone_into(&mut self.user);
        password.clone_into(&mut self.password);
        self
    }
    /// Another mailbox besides INBOX, empty.
    pub fn mailbox(mut self, name: &str) -> Self {
        self.mailboxes.push(name.to_owned());
        self
    }

    pub fn start(self) -> FaultServer {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind the IMAP fault server");
        let port = listener.local_addr().expect("local address").port();
        listener
            .set_nonblocking(true)
            .expect("non-blocking listener");
        let mut state = State {
            caps: self.caps,
            user: self.user,
            password: self.password,
            append_limit: self.append_limit,
            mailboxes: BTreeMap::new(),
            next_uidvalidity: 1_700_000_001,
            faults: Vec::new(),
            appends_seen: 0,
            commands: Vec::new(),
            reached: Vec::new(),
            released: false,
            connections: 0,
            active: 0,
            down: false,
        };
        for name in std::iter::once("INBOX".to_owned()).chain(self.mailboxes) {
            state.create(&name);
        }
        let shared = Arc::new(Shared {
            state: Mutex::new(state),
            cond: Condvar::new(),
            stop: AtomicBool::new(false),
        });
        let accept = shared.clone();
        thread::spawn(move || accept_loop(listener, accept));
        FaultServer { port, shared }
    }
}

/// A running scripted IMAP server; stops accepting (and stalls end) when
/// dropped.
pub struct FaultServer {
    port: u16,
    shared: Arc<Shared>,
}

impl Drop for FaultServer {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        self.shared.cond.notify_all();
    }
}

impl FaultServer {
    /// IMAP4rev1, AUTH=PLAIN, AUTH=LOGIN, SASL-IR and UIDPLUS; user "bob",
    /// password "imap-pw"; an empty INBOX.
    pub fn builder() -> Builder {
        Builder {
            caps: [
                "IMAP4rev1",
                "AUTH=PLAIN",
                "AUTH=LOGIN",
                "SASL-IR",
                "UIDPLUS",
            ]
            .map(String::from)
            .to_vec(),
            user: "bob".into(),
            password: "imap-pw".into(),
            append_limit: None,
            mailboxes: Vec::new(),
        }
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn user(&self) -> String {
        self.shared.lock().user.clone()
    }

    pub fn password(&self) -> String {
        self.shared.lock().password.clone()
    }

    /// Adds a fault; it fires once, the first time `trigger` matches.
    pub fn fault(&self, trigger: Trigger, fault: Fault) {
        self.shared.lock().faults.push((trigger, fault));
    }

    /// Removes every fault that has not fired.
    pub fn clear_faults(&self) {
        self.shared.lock().faults.clear();
    }

    /// Waits until a stall at `point` has been reached (true) or `limit`
    /// has passed (false).
    pub fn wait_reached(&self, point: Point, limit: Duration) -> bool {
        let deadline = Instant::now() + limit;
        let mut state = self.shared.lock();
        loop {
            if state.reached.contains(&point) {
                return true;
            }
            let now = Instant::now();
            if now >= deadline {
                return false;
            }
            state = self
                .shared
                .cond
                .wait_timeout(state, deadline - now)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
    }

    /// Ends every stall (now and later ones that are already queued fire
    /// and go on at once).
    pub fn release(&self) {
        self.shared.lock().released = true;
        self.shared.cond.notify_all();
    }

    /// Every command received, in order, one line each; a literal's bytes
    /// are shown as `<N octets>` (APPENDed messages are in `messages`), and
    /// the secrets of LOGIN and AUTHENTICATE are masked.
    pub fn commands(&self) -> Vec<String> {
        self.shared.lock().commands.clone()
    }

    /// How many APPEND commands arrived (whole or not).
    pub fn appends_seen(&self) -> u32 {
        self.shared.lock().appends_seen
    }

    /// Waits until every connection has ended (true) or `limit` has
    /// passed: after popsync was killed, whatever it had sent is processed
    /// before the next run looks at the mailbox.
    pub fn wait_idle(&self, limit: Duration) -> bool {
        let deadline = Instant::now() + limit;
        let mut state = self.shared.lock();
        loop {
            if state.active == 0 {
                return true;
            }
            let now = Instant::now();
            if now >= deadline {
                return false;
            }
            state = self
                .shared
                .cond
                .wait_timeout(state, (deadline - now).min(Duration::from_millis(50)))
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
    }

    /// While `down`, every new connection is closed at once, before the
    /// greeting (not counted in `connections`).
    pub fn set_down(&self, down: bool) {
        self.shared.lock().down = down;
    }

    /// Changes (or with None removes) APPENDLIMIT for later connections.
    pub fn set_append_limit(&self, limit: Option<usize>) {
        let mut state = self.shared.lock();
        state.caps.retain(|c| !c.starts_with("APPENDLIMIT="));
        if let Some(n) = limit {
            state.caps.push(format!("APPENDLIMIT={n}"));
        }
        state.append_limit = limit;
    }

    /// How many connections were accepted.
    pub fn connections(&self) -> u32 {
        self.shared.lock().connections
    }

    /// The messages of `mailbox` in UID order (empty if it does not exist).
    pub fn messages(&self, mailbox: &str) -> Vec<Stored> {
        let state = self.shared.lock();
        state
            .mailboxes
            .get(&mailbox_key(mailbox))
            .map(|m| m.messages.clone())
            .unwrap_or_default()
    }

    pub fn mailbox_exists(&self, mailbox: &str) -> bool {
        self.shared
            .lock()
            .mailboxes
            .contains_key(&mailbox_key(mailbox))
    }

    pub fn uidvalidity(&self, mailbox: &str) -> Option<u32> {
        self.shared
            .lock()
            .mailboxes
            .get(&mailbox_key(mailbox))
            .map(|m| m.uidvalidity)
    }

    /// A new UIDVALIDITY for `mailbox` and its messages renumbered from
    /// UID 1, as when a server rebuilds its index: every UID a client
    /// remembers is void, the messages are still there.
    pub fn change_uidvalidity(&self, mailbox: &str) {
        let mut state = self.shared.lock();
        let uidvalidity = state.take_uidvalidity();
        let mbox = state
            .mailboxes
            .get_mut(&mailbox_key(mailbox))
            .expect("change_uidvalidity of an existing mailbox");
        mbox.uidvalidity = uidvalidity;
        let mut uid = 0;
        for m in &mut mbox.messages {
            uid += 1;
            m.uid = uid;
        }
        mbox.uidnext = uid + 1;
    }

    /// Puts a message into `mailbox` as another client would.
    pub fn insert(&self, mailbox: &str, bytes: &[u8]) {
        let mut state = self.shared.lock();
        let mbox = state
            .mailboxes
            .get_mut(&mailbox_key(mailbox))
            .expect("insert into an existing mailbox");
        let uid = mbox.uidnext;
        mbox.uidnext += 1;
        mbox.messages.push(Stored {
            uid,
            flags: Vec::new(),
            internaldate: None,
            bytes: bytes.to_vec(),
        });
    }
}
