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
//! ```ignore
//! let srv = FaultServer::builder().literal_plus().start();
//! srv.fault(Trigger::Append(2), Fault::Stall(Point::AfterLiteral));
//! // spawn popsync, srv.wait_reached(Point::AfterLiteral, ..), kill it
//! srv.release();
//! assert_eq!(srv.messages("INBOX").len(), 2);
//! ```
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::io::{self, Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread;
use std::time::{Duration, Instant};

/// The longest command line (without literals) the server reads.
const MAX_LINE: usize = 64 * 1024;
/// The largest literal it accepts.
const MAX_LITERAL: usize = 64 * 1024 * 1024;

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

#[derive(Clone, Debug)]
struct Mbox {
    uidvalidity: u32,
    uidnext: u32,
    messages: Vec<Stored>,
}

struct State {
    caps: Vec<String>,
    user: String,
    password: String,
    append_limit: Option<usize>,
    mailboxes: BTreeMap<String, Mbox>,
    next_uidvalidity: u32,
    faults: Vec<(Trigger, Fault)>,
    appends_seen: u32,
    commands: Vec<String>,
    reached: Vec<Point>,
    released: bool,
    connections: u32,
    /// Connections whose thread still runs.
    active: u32,
    /// Closing every new connection at once, as a server that is down.
    down: bool,
}

struct Shared {
    state: Mutex<State>,
    cond: Condvar,
    stop: AtomicBool,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        // A panicking connection thread must not take the test down with a
        // poisoned lock; the state stays usable.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
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

impl State {
    fn take_uidvalidity(&mut self) -> u32 {
        let v = self.next_uidvalidity;
        self.next_uidvalidity += 1000;
        v
    }

    fn create(&mut self, name: &str) -> bool {
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

    fn take_fault(&mut self, trigger: &Trigger) -> Option<Fault> {
        let i = self.faults.iter().position(|(t, _)| t == trigger)?;
        Some(self.faults.remove(i).1)
    }

    fn caps_line(&self) -> String {
        self.caps.join(" ")
    }
}

/// INBOX is case-insensitive (RFC 3501 5.1); other names are kept as sent.
fn mailbox_key(name: &str) -> String {
    if name.eq_ignore_ascii_case("INBOX") {
        "INBOX".to_owned()
    } else {
        name.to_owned()
    }
}

fn accept_loop(listener: TcpListener, shared: Arc<Shared>) {
    while !shared.stop.load(Ordering::SeqCst) {
        match listener.accept() {
            Ok((stream, _)) => {
                if shared.lock().down {
                    let _ = stream.shutdown(Shutdown::Both);
                    continue;
                }
                {
                    let mut state = shared.lock();
                    state.connections += 1;
                    state.active += 1;
                }
                let shared = shared.clone();
                thread::spawn(move || {
                    let mut conn = Conn::new(stream, shared.clone());
                    let _ = conn.serve();
                    let _ = conn.stream.shutdown(Shutdown::Both);
                    drop(conn);
                    shared.lock().active -= 1;
                    shared.cond.notify_all();
                });
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                thread::sleep(Duration::from_millis(5));
            }
            Err(_) => thread::sleep(Duration::from_millis(5)),
        }
    }
}

/// One piece of a command as read off the wire.
#[derive(Debug)]
enum Part {
    Text(Vec<u8>),
    Literal(Vec<u8>),
}

/// A token of a command.
#[derive(Clone, Debug, PartialEq)]
enum Tok {
    Atom(String),
    Str(Vec<u8>),
    /// A literal's bytes.
    Lit(Vec<u8>),
    Open,
    Close,
}

impl Tok {
    fn text(&self) -> Option<String> {
        match self {
            Tok::Atom(s) => Some(s.clone()),
            Tok::Str(b) | Tok::Lit(b) => Some(String::from_utf8_lossy(b).into_owned()),
            _ => None,
        }
    }
    fn bytes(&self) -> Option<Vec<u8>> {
        match self {
            Tok::Atom(s) => Some(s.clone().into_bytes()),
            Tok::Str(b) | Tok::Lit(b) => Some(b.clone()),
            _ => None,
        }
    }
}

/// `{n}` or `{n+}` at the end of a line: (n, non-synchronising).
fn literal_at_end(line: &[u8]) -> Option<(usize, bool)> {
    let line = std::str::from_utf8(line).ok()?;
    let inner = line.strip_suffix('}')?;
    let open = inner.rfind('{')?;
    let spec = &inner[open + 1..];
    let (digits, plus) = match spec.strip_suffix('+') {
        Some(d) => (d, true),
        None => (spec, false),
    };
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    Some((digits.parse().ok()?, plus))
}

fn tokenize(parts: &[Part]) -> Vec<Tok> {
    let mut toks = Vec::new();
    for part in parts {
        match part {
            Part::Literal(bytes) => toks.push(Tok::Lit(bytes.clone())),
            Part::Text(text) => {
                let mut text: &[u8] = text;
                if let Some(open) = text.iter().rposition(|&b| b == b'{')
                    && literal_at_end(text).is_some()
                {
                    text = &text[..open];
                }
                tokenize_text(text, &mut toks);
            }
        }
    }
    toks
}

fn tokenize_text(text: &[u8], toks: &mut Vec<Tok>) {
    let mut i = 0;
    while i < text.len() {
        match text[i] {
            b' ' => i += 1,
            b'(' => {
                toks.push(Tok::Open);
                i += 1;
            }
            b')' => {
                toks.push(Tok::Close);
                i += 1;
            }
            b'"' => {
                let mut s = Vec::new();
                i += 1;
                while i < text.len() && text[i] != b'"' {
                    if text[i] == b'\\' && i + 1 < text.len() {
                        i += 1;
                    }
                    s.push(text[i]);
                    i += 1;
                }
                i += 1;
                toks.push(Tok::Str(s));
            }
            _ => {
                // An atom; a [section] may hold spaces and parentheses.
                let start = i;
                let mut depth = 0;
                while i < text.len() {
                    match text[i] {
                        b'[' => depth += 1,
                        b']' => depth -= 1,
                        b' ' | b'(' | b')' if depth == 0 => break,
                        _ => {}
                    }
                    i += 1;
                }
                toks.push(Tok::Atom(
                    String::from_utf8_lossy(&text[start..i]).into_owned(),
                ));
            }
        }
    }
}

/// What to do after a command.
enum Flow {
    Go,
    Close,
}

struct Conn {
    stream: TcpStream,
    buf: Vec<u8>,
    shared: Arc<Shared>,
    authenticated: bool,
    selected: Option<String>,
}

impl Conn {
    fn new(stream: TcpStream, shared: Arc<Shared>) -> Conn {
        let _ = stream.set_read_timeout(Some(Duration::from_millis(100)));
        let _ = stream.set_nodelay(true);
        Conn {
            stream,
            buf: Vec::new(),
            shared,
            authenticated: false,
            selected: None,
        }
    }

    fn stopped(&self) -> bool {
        self.shared.stop.load(Ordering::SeqCst)
    }

    /// Reads more bytes into `buf`; false at end of stream.
    fn fill(&mut self) -> io::Result<bool> {
        let mut chunk = [0u8; 64 * 1024];
        loop {
            if self.stopped() {
                return Err(io::Error::other("server stopped"));
            }
            match self.stream.read(&mut chunk) {
                Ok(0) => return Ok(false),
                Ok(n) => {
                    self.buf.extend_from_slice(&chunk[..n]);
                    return Ok(true);
                }
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::WouldBlock
                            | io::ErrorKind::TimedOut
                            | io::ErrorKind::Interrupted
                    ) => {}
                Err(e) => return Err(e),
            }
        }
    }

    /// One line without its CRLF (or bare LF); None at end of stream.
    fn read_line(&mut self) -> io::Result<Option<Vec<u8>>> {
        loop {
            if let Some(nl) = self.buf.iter().position(|&b| b == b'\n') {
                let mut line: Vec<u8> = self.buf.drain(..=nl).collect();
                line.pop();
                if line.last() == Some(&b'\r') {
                    line.pop();
                }
                return Ok(Some(line));
            }
            if self.buf.len() > MAX_LINE {
                return Err(io::Error::other("command line too long"));
            }
            if !self.fill()? {
                return Ok(None);
            }
        }
    }

    /// Exactly `n` bytes; None at end of stream.
    fn read_bytes(&mut self, n: usize) -> io::Result<Option<Vec<u8>>> {
        while self.buf.len() < n {
            if !self.fill()? {
                return Ok(None);
            }
        }
        Ok(Some(self.buf.drain(..n).collect()))
    }

    fn send(&mut self, text: &str) -> io::Result<()> {
        self.stream.write_all(text.as_bytes())?;
        self.stream.flush()
    }

    fn send_bytes(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.stream.write_all(bytes)?;
        self.stream.flush()
    }

    /// Marks `point` as reached and waits for `release` or the end of the
    /// server.
    fn stall(&mut self, point: Point) {
        let mut state = self.shared.lock();
        state.reached.push(point);
        self.shared.cond.notify_all();
        while !state.released && !self.stopped() {
            state = self
                .shared
                .cond
                .wait_timeout(state, Duration::from_millis(50))
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
    }

    fn record(&self, line: String) {
        if !line.is_empty() {
            self.shared.lock().commands.push(line);
        }
    }

    fn serve(&mut self) -> io::Result<()> {
        let caps = self.shared.lock().caps_line();
        self.send(&format!(
            "* OK [CAPABILITY {caps}] popsync IMAP fault server ready\r\n"
        ))?;
        while let Some(line) = self.read_line()? {
            if let Flow::Close = self.command(line)? {
                break;
            }
        }
        Ok(())
    }

    /// Reads the rest of a command whose first line is `line`: its literals
    /// (sending "+" for synchronising ones) and continuation lines.
    fn rest_of_command(&mut self, mut line: Vec<u8>) -> io::Result<Option<Vec<Part>>> {
        let mut parts = Vec::new();
        while let Some((n, nonsync)) = literal_at_end(&line) {
            parts.push(Part::Text(line));
            if n > MAX_LITERAL {
                return Err(io::Error::other("literal too large"));
            }
            if !nonsync {
                self.send("+ Ready for literal data\r\n")?;
            }
            let Some(bytes) = self.read_bytes(n)? else {
                return Ok(None);
            };
            parts.push(Part::Literal(bytes));
            let Some(next) = self.read_line()? else {
                return Ok(None);
            };
            line = next;
        }
        parts.push(Part::Text(line));
        Ok(Some(parts))
    }

    fn command(&mut self, line: Vec<u8>) -> io::Result<Flow> {
        let head = tokenize(&[Part::Text(line.clone())]);
        let tag = match head.first().and_then(Tok::text) {
            Some(t) => t,
            None => {
                self.record(String::from_utf8_lossy(&line).into_owned());
                self.send("* BAD Empty command\r\n")?;
                return Ok(Flow::Go);
            }
        };
        let mut verb = head
            .get(1)
            .and_then(Tok::text)
            .unwrap_or_default()
            .to_ascii_uppercase();
        if verb == "UID" {
            let sub = head
                .get(2)
                .and_then(Tok::text)
                .unwrap_or_default()
                .to_ascii_uppercase();
            verb = format!("UID {sub}");
        }
        if verb == "APPEND" && self.authenticated {
            return self.append(&tag, line);
        }
        if verb == "AUTHENTICATE" {
            self.record(masked(&line, 3));
            return self.authenticate(&tag, &head);
        }
        let Some(parts) = self.rest_of_command(line)? else {
            return Ok(Flow::Close);
        };
        let shown = shown(&parts, if verb == "LOGIN" { 3 } else { usize::MAX });
        self.record(shown);
        let fault = self
            .shared
            .lock()
            .take_fault(&Trigger::Command(verb.clone()));
        match fault {
            Some(Fault::No(text)) => {
                self.send(&format!("{tag} NO {text}\r\n"))?;
                return Ok(Flow::Go);
            }
            Some(Fault::Drop | Fault::DropMidLiteral | Fault::DropBeforeOk) => {
                return Ok(Flow::Close);
            }
            Some(Fault::Stall(point)) => self.stall(point),
            None => {}
        }
        let toks = tokenize(&parts);
        let args = &toks[2.min(toks.len())..];
        match verb.as_str() {
            "CAPABILITY" => {
                let caps = self.shared.lock().caps_line();
                self.send(&format!(
                    "* CAPABILITY {caps}\r\n{tag} OK CAPABILITY completed\r\n"
                ))?;
            }
            "NOOP" | "CHECK" | "SUBSCRIBE" | "UNSUBSCRIBE" => {
                self.send(&format!("{tag} OK {verb} completed\r\n"))?
            }
            "LOGOUT" => {
                self.send(&format!(
                    "* BYE Logging out\r\n{tag} OK LOGOUT completed\r\n"
                ))?;
                return Ok(Flow::Close);
            }
            "ID" => self.send(&format!("* ID NIL\r\n{tag} OK ID completed\r\n"))?,
            "LOGIN" => {
                let user = args.first().and_then(Tok::text).unwrap_or_default();
                let pass = args.get(1).and_then(Tok::text).unwrap_or_default();
                self.login(&tag, &user, &pass)?;
            }
            _ if !self.authenticated => {
                self.send(&format!("{tag} BAD Log in first\r\n"))?;
            }
            "ENABLE" => self.send(&format!("* ENABLED\r\n{tag} OK ENABLE completed\r\n"))?,
            "NAMESPACE" => self.send(&format!(
                "* NAMESPACE ((\"\" \"/\")) NIL NIL\r\n{tag} OK NAMESPACE completed\r\n"
            ))?,
            "SELECT" | "EXAMINE" => self.select(&tag, &verb, args)?,
            "STATUS" => self.status(&tag, args)?,
            "LIST" | "LSUB" => self.list(&tag, &verb, args)?,
            "CREATE" => {
                let name = args.first().and_then(Tok::text).unwrap_or_default();
                let created = self.shared.lock().create(&name);
                if created {
                    self.send(&format!("{tag} OK CREATE completed\r\n"))?;
                } else {
                    self.send(&format!(
                        "{tag} NO [ALREADYEXISTS] Mailbox exists already\r\n"
                    ))?;
                }
            }
            "CLOSE" | "UNSELECT" => {
                self.selected = None;
                self.send(&format!("{tag} OK {verb} completed\r\n"))?;
            }
            "SEARCH" | "UID SEARCH" => {
                let uid = verb.starts_with("UID");
                let args = if uid {
                    &args[1.min(args.len())..]
                } else {
                    args
                };
                self.search(&tag, uid, args)?;
            }
            "FETCH" | "UID FETCH" => {
                let uid = verb.starts_with("UID");
                let args = if uid {
                    &args[1.min(args.len())..]
                } else {
                    args
                };
                self.fetch(&tag, uid, args)?;
            }
            _ => self.send(&format!("{tag} BAD Unknown command {verb}\r\n"))?,
        }
        Ok(Flow::Go)
    }

    fn login(&mut self, tag: &str, user: &str, pass: &str) -> io::Result<()> {
        let (ok, caps) = {
            let state = self.shared.lock();
            (
                state.user == user && state.password == pass,
                state.caps_line(),
            )
        };
        if ok {
            self.authenticated = true;
            self.send(&format!("{tag} OK [CAPABILITY {caps}] Logged in\r\n"))
        } else {
            self.send(&format!(
                "{tag} NO [AUTHENTICATIONFAILED] Authentication failed.\r\n"
            ))
        }
    }

    fn authenticate(&mut self, tag: &str, head: &[Tok]) -> io::Result<Flow> {
        use base64::Engine as _;
        let b64 = base64::engine::general_purpose::STANDARD;
        let mech = head
            .get(2)
            .and_then(Tok::text)
            .unwrap_or_default()
            .to_ascii_uppercase();
        let initial = head.get(3).and_then(Tok::text);
        fn next_answer(conn: &mut Conn, challenge: &str) -> io::Result<Option<String>> {
            conn.send(&format!("+ {challenge}\r\n"))?;
            Ok(conn
                .read_line()?
                .map(|l| String::from_utf8_lossy(&l).into_owned()))
        }
        let decode = |s: &str| b64.decode(s.trim()).unwrap_or_default();
        match mech.as_str() {
            "PLAIN" => {
                let answer = match initial {
                    Some(i) if i == "=" => String::new(),
                    Some(i) => i,
                    None => match next_answer(self, "")? {
                        Some(a) => a,
                        None => return Ok(Flow::Close),
                    },
                };
                if answer == "*" {
                    self.send(&format!("{tag} BAD Authentication cancelled\r\n"))?;
                    return Ok(Flow::Go);
                }
                let raw = decode(&answer);
                let fields: Vec<&[u8]> = raw.split(|&b| b == 0).collect();
                let (user, pass) = match fields.as_slice() {
                    [_, u, p] => (
                        String::from_utf8_lossy(u).into_owned(),
                        String::from_utf8_lossy(p).into_owned(),
                    ),
                    _ => (String::new(), String::new()),
                };
                self.login(tag, &user, &pass)?;
            }
            "LOGIN" => {
                let Some(user) = next_answer(self, &b64.encode("Username:"))? else {
                    return Ok(Flow::Close);
                };
                let Some(pass) = next_answer(self, &b64.encode("Password:"))? else {
                    return Ok(Flow::Close);
                };
                let user = String::from_utf8_lossy(&decode(&user)).into_owned();
                let pass = String::from_utf8_lossy(&decode(&pass)).into_owned();
                self.login(tag, &user, &pass)?;
            }
            _ => self.send(&format!(
                "{tag} NO Unsupported authentication mechanism\r\n"
            ))?,
        }
        Ok(Flow::Go)
    }

    fn select(&mut self, tag: &str, verb: &str, args: &[Tok]) -> io::Result<()> {
        let name = args.first().and_then(Tok::text).unwrap_or_default();
        let mbox = self
            .shared
            .lock()
            .mailboxes
            .get(&mailbox_key(&name))
            .cloned();
        let Some(mbox) = mbox else {
            self.selected = None;
            return self.send(&format!(
                "{tag} NO [NONEXISTENT] Mailbox doesn't exist: {name}\r\n"
            ));
        };
        self.selected = Some(mailbox_key(&name));
        let rw = if verb == "SELECT" {
            "READ-WRITE"
        } else {
            "READ-ONLY"
        };
        self.send(&format!(
            "* FLAGS (\\Answered \\Flagged \\Deleted \\Seen \\Draft)\r\n\
             * OK [PERMANENTFLAGS (\\Answered \\Flagged \\Deleted \\Seen \\Draft \\*)] Flags permitted.\r\n\
             * {} EXISTS\r\n* 0 RECENT\r\n\
             * OK [UIDVALIDITY {}] UIDs valid\r\n\
             * OK [UIDNEXT {}] Predicted next UID\r\n\
             {tag} OK [{rw}] {verb} completed\r\n",
            mbox.messages.len(),
            mbox.uidvalidity,
            mbox.uidnext
        ))
    }

    fn status(&mut self, tag: &str, args: &[Tok]) -> io::Result<()> {
        let name = args.first().and_then(Tok::text).unwrap_or_default();
        let mbox = self
            .shared
            .lock()
            .mailboxes
            .get(&mailbox_key(&name))
            .cloned();
        let Some(mbox) = mbox else {
            return self.send(&format!(
                "{tag} NO [NONEXISTENT] Mailbox doesn't exist: {name}\r\n"
            ));
        };
        let mut items = Vec::new();
        for t in &args[1.min(args.len())..] {
            let Some(item) = t.text() else { continue };
            let value = match item.to_ascii_uppercase().as_str() {
                "MESSAGES" => mbox.messages.len() as u64,
                "UIDNEXT" => u64::from(mbox.uidnext),
                "UIDVALIDITY" => u64::from(mbox.uidvalidity),
                "UNSEEN" => mbox
                    .messages
                    .iter()
                    .filter(|m| !m.flags.iter().any(|f| f.eq_ignore_ascii_case("\\Seen")))
                    .count() as u64,
                "RECENT" => 0,
                "SIZE" => mbox.messages.iter().map(|m| m.bytes.len() as u64).sum(),
                _ => continue,
            };
            items.push(format!("{} {value}", item.to_ascii_uppercase()));
        }
        self.send(&format!(
            "* STATUS {} ({})\r\n{tag} OK STATUS completed\r\n",
            quoted(&name),
            items.join(" ")
        ))
    }

    fn list(&mut self, tag: &str, verb: &str, args: &[Tok]) -> io::Result<()> {
        let pattern = args.get(1).and_then(Tok::text).unwrap_or_default();
        let names: Vec<String> = self.shared.lock().mailboxes.keys().cloned().collect();
        let mut out = String::new();
        if pattern.is_empty() {
            out.push_str(&format!("* {verb} (\\Noselect) \"/\" \"\"\r\n"));
        }
        for name in names {
            if wildcard_match(&pattern, &name) {
                out.push_str(&format!(
                    "* {verb} (\\HasNoChildren) \"/\" {}\r\n",
                    quoted(&name)
                ));
            }
        }
        out.push_str(&format!("{tag} OK {verb} completed\r\n"));
        self.send(&out)
    }

    fn selected_mbox(&self) -> Option<Mbox> {
        let name = self.selected.as_ref()?;
        self.shared.lock().mailboxes.get(name).cloned()
    }

    fn search(&mut self, tag: &str, uid: bool, args: &[Tok]) -> io::Result<()> {
        let Some(mbox) = self.selected_mbox() else {
            return self.send(&format!("{tag} BAD No mailbox selected\r\n"));
        };
        let mut args = args;
        if args
            .first()
            .and_then(Tok::text)
            .is_some_and(|t| t.eq_ignore_ascii_case("CHARSET"))
        {
            args = &args[2.min(args.len())..];
        }
        let mut pos = 0;
        let mut keys = Vec::new();
        while pos < args.len() {
            match parse_key(args, &mut pos, &mbox) {
                Ok(k) => keys.push(k),
                Err(e) => return self.send(&format!("{tag} BAD Search: {e}\r\n")),
            }
        }
        let key = Key::And(keys);
        let hits: Vec<String> = mbox
            .messages
            .iter()
            .enumerate()
            .filter(|(i, m)| key.matches(*i as u32 + 1, m))
            .map(|(i, m)| {
                if uid {
                    m.uid.to_string()
                } else {
                    (i + 1).to_string()
                }
            })
            .collect();
        let mut line = String::from("* SEARCH");
        for h in hits {
            line.push(' ');
            line.push_str(&h);
        }
        self.send(&format!("{line}\r\n{tag} OK SEARCH completed\r\n"))
    }

    fn fetch(&mut self, tag: &str, uid: bool, args: &[Tok]) -> io::Result<()> {
        let Some(mbox) = self.selected_mbox() else {
            return self.send(&format!("{tag} BAD No mailbox selected\r\n"));
        };
        let Some(set) = args.first().and_then(Tok::text) else {
            return self.send(&format!("{tag} BAD Missing sequence set\r\n"));
        };
        let mut items: Vec<String> = Vec::new();
        for t in &args[1.min(args.len())..] {
            if let Some(s) = t.text() {
                items.push(s.to_ascii_uppercase());
            }
        }
        let mut expanded = Vec::new();
        for item in items {
            match item.as_str() {
                "FAST" => {
                    expanded.extend(["FLAGS", "INTERNALDATE", "RFC822.SIZE"].map(String::from))
                }
                "ALL" | "FULL" => {
                    expanded.extend(["FLAGS", "INTERNALDATE", "RFC822.SIZE"].map(String::from))
                }
                _ => expanded.push(item),
            }
        }
        if uid && !expanded.iter().any(|i| i == "UID") {
            expanded.insert(0, "UID".into());
        }
        let max = if uid {
            mbox.messages.last().map_or(0, |m| m.uid)
        } else {
            mbox.messages.len() as u32
        };
        let Some(ranges) = parse_set(&set, max) else {
            return self.send(&format!("{tag} BAD Bad sequence set\r\n"));
        };
        let mut out: Vec<u8> = Vec::new();
        for (i, m) in mbox.messages.iter().enumerate() {
            let seq = i as u32 + 1;
            let n = if uid { m.uid } else { seq };
            if !in_set(&ranges, n) {
                continue;
            }
            let mut fields: Vec<Vec<u8>> = Vec::new();
            for item in &expanded {
                let field = match fetch_item(item, m) {
                    Some(f) => f,
                    None => return self.send(&format!("{tag} BAD Unknown FETCH item {item}\r\n")),
                };
                fields.push(field);
            }
            out.extend_from_slice(format!("* {seq} FETCH (").as_bytes());
            out.extend_from_slice(&fields.join(&b' '));
            out.extend_from_slice(b")\r\n");
        }
        out.extend_from_slice(format!("{tag} OK FETCH completed\r\n").as_bytes());
        self.send_bytes(&out)
    }

    /// APPEND, read step by step so that faults can strike between the
    /// steps.
    fn append(&mut self, tag: &str, first: Vec<u8>) -> io::Result<Flow> {
        let (n, caps_uidplus, limit) = {
            let mut state = self.shared.lock();
            state.appends_seen += 1;
            (
                state.appends_seen,
                state.caps.iter().any(|c| c == "UIDPLUS"),
                state.append_limit,
            )
        };
        let fault = self.shared.lock().take_fault(&Trigger::Append(n));
        let mut shown_line = String::from_utf8_lossy(&first).into_owned();
        match fault {
            Some(Fault::Stall(Point::AfterAppendLine)) => {
                self.record(shown_line.clone());
                self.stall(Point::AfterAppendLine);
                // Recorded; whatever follows is not recorded again.
                shown_line = String::new();
            }
            Some(Fault::Drop) => {
                self.record(shown_line);
                return Ok(Flow::Close);
            }
            _ => {}
        }
        // The mailbox, if it is on the first line (not itself a literal).
        let first_toks = tokenize(&[Part::Text(first.clone())]);
        let early_mailbox = if literal_at_end(&first).is_some() && first_toks.len() >= 3 {
            first_toks.get(2).and_then(Tok::text)
        } else {
            None
        };
        let missing = early_mailbox.as_ref().is_some_and(|name| {
            !self
                .shared
                .lock()
                .mailboxes
                .contains_key(&mailbox_key(name))
        });

        let mut parts = Vec::new();
        let mut line = first;
        let mut literal_index = 0;
        while let Some((size, nonsync)) = literal_at_end(&line) {
            parts.push(Part::Text(line));
            if size > MAX_LITERAL {
                self.record(shown_line);
                return Err(io::Error::other("literal too large"));
            }
            if !nonsync {
                // A synchronising literal can be refused before it is sent.
                if literal_index == 0 && missing {
                    self.record(shown_line);
                    self.send(&format!(
                        "{tag} NO [TRYCREATE] Mailbox doesn't exist: {}\r\n",
                        early_mailbox.unwrap_or_default()
                    ))?;
                    return Ok(Flow::Go);
                }
                if limit.is_some_and(|l| size > l) {
                    self.record(shown_line);
                    self.send(&format!(
                        "{tag} NO [TOOBIG] Message too large (APPENDLIMIT)\r\n"
                    ))?;
                    return Ok(Flow::Go);
                }
                self.send("+ Ready for literal data\r\n")?;
            }
            let mid = literal_index == 0
                && matches!(
                    fault,
                    Some(Fault::DropMidLiteral | Fault::Stall(Point::MidLiteral))
                );
            let bytes = if mid {
                let half = size / 2;
                let Some(mut head) = self.read_bytes(half)? else {
                    self.record(shown_line);
                    return Ok(Flow::Close);
                };
                if fault == Some(Fault::DropMidLiteral) {
                    self.record(shown_line);
                    return Ok(Flow::Close);
                }
                self.record(std::mem::take(&mut shown_line));
                self.stall(Point::MidLiteral);
                // The client was probably killed meanwhile; if not, go on.
                let Some(tail) = self.read_bytes(size - half)? else {
                    return Ok(Flow::Close);
                };
                head.extend_from_slice(&tail);
                head
            } else {
                let Some(bytes) = self.read_bytes(size)? else {
                    self.record(shown_line);
                    return Ok(Flow::Close);
                };
                bytes
            };
            shown_line.push_str(&format!("<{} octets>", bytes.len()));
            parts.push(Part::Literal(bytes));
            literal_index += 1;
            let Some(next) = self.read_line()? else {
                self.record(shown_line);
                return Ok(Flow::Close);
            };
            shown_line.push_str(&String::from_utf8_lossy(&next));
            line = next;
        }
        parts.push(Part::Text(line));
        self.record(shown_line);

        // tag APPEND mailbox 1*( [flags] [date-time] literal )
        let toks = tokenize(&parts);
        let Some(mailbox) = toks.get(2).and_then(Tok::text) else {
            self.send(&format!("{tag} BAD Missing mailbox\r\n"))?;
            return Ok(Flow::Go);
        };
        let mut messages: Vec<(Vec<String>, Option<String>, Vec<u8>)> = Vec::new();
        let mut i = 3;
        while i < toks.len() {
            let mut flags = Vec::new();
            if toks[i] == Tok::Open {
                i += 1;
                while i < toks.len() && toks[i] != Tok::Close {
                    if let Some(f) = toks[i].text() {
                        flags.push(f);
                    }
                    i += 1;
                }
                i += 1;
            }
            let mut date = None;
            if let Some(Tok::Str(_)) = toks.get(i) {
                date = toks[i].text();
                i += 1;
            }
            match toks.get(i) {
                Some(Tok::Lit(bytes)) => messages.push((flags, date, bytes.clone())),
                _ => {
                    self.send(&format!("{tag} BAD Missing message literal\r\n"))?;
                    return Ok(Flow::Go);
                }
            }
            i += 1;
        }
        if messages.is_empty() {
            self.send(&format!("{tag} BAD Missing message literal\r\n"))?;
            return Ok(Flow::Go);
        }
        let multi = self.shared.lock().caps.iter().any(|c| c == "MULTIAPPEND");
        if messages.len() > 1 && !multi {
            self.send(&format!("{tag} BAD MULTIAPPEND not offered\r\n"))?;
            return Ok(Flow::Go);
        }
        if !self
            .shared
            .lock()
            .mailboxes
            .contains_key(&mailbox_key(&mailbox))
        {
            self.send(&format!(
                "{tag} NO [TRYCREATE] Mailbox doesn't exist: {mailbox}\r\n"
            ))?;
            return Ok(Flow::Go);
        }
        if limit.is_some_and(|l| messages.iter().any(|m| m.2.len() > l)) {
            self.send(&format!(
                "{tag} NO [TOOBIG] Message too large (APPENDLIMIT)\r\n"
            ))?;
            return Ok(Flow::Go);
        }
        if let Some(Fault::No(text)) = &fault {
            self.send(&format!("{tag} NO {text}\r\n"))?;
            return Ok(Flow::Go);
        }
        let (uidvalidity, uids) = {
            let mut state = self.shared.lock();
            let mbox = state
                .mailboxes
                .get_mut(&mailbox_key(&mailbox))
                .expect("checked above");
            let mut uids = Vec::new();
            for (flags, date, bytes) in messages {
                let uid = mbox.uidnext;
                mbox.uidnext += 1;
                uids.push(uid);
                mbox.messages.push(Stored {
                    uid,
                    flags,
                    internaldate: date,
                    bytes,
                });
            }
            (mbox.uidvalidity, uids)
        };
        if fault == Some(Fault::Stall(Point::AfterLiteral)) {
            self.stall(Point::AfterLiteral);
        }
        if fault == Some(Fault::DropBeforeOk) {
            return Ok(Flow::Close);
        }
        let code = if caps_uidplus {
            let set = if uids.len() == 1 {
                uids[0].to_string()
            } else {
                format!("{}:{}", uids[0], uids[uids.len() - 1])
            };
            format!("[APPENDUID {uidvalidity} {set}] ")
        } else {
            String::new()
        };
        self.send(&format!("{tag} OK {code}APPEND completed\r\n"))?;
        if fault == Some(Fault::Stall(Point::AfterTaggedOk)) {
            self.stall(Point::AfterTaggedOk);
        }
        Ok(Flow::Go)
    }
}

/// A command as recorded: literals as `{N}`, and from token `mask_from` on
/// (LOGIN's password) masked.
fn shown(parts: &[Part], mask_from: usize) -> String {
    let mut s = String::new();
    for p in parts {
        match p {
            Part::Text(t) => s.push_str(&String::from_utf8_lossy(t)),
            Part::Literal(b) => s.push_str(&format!("<{} octets>", b.len())),
        }
    }
    if mask_from != usize::MAX {
        let words: Vec<&str> = s.splitn(mask_from + 1, ' ').collect();
        if words.len() > mask_from {
            return format!("{} ***", words[..mask_from].join(" "));
        }
    }
    s
}

fn masked(line: &[u8], keep: usize) -> String {
    shown(&[Part::Text(line.to_vec())], keep)
}

fn quoted(s: &str) -> String {
    format!("\"{}\"", s.replace('\\', "\\\\").replace('"', "\\\""))
}

fn wildcard_match(pattern: &str, name: &str) -> bool {
    fn go(p: &[u8], n: &[u8]) -> bool {
        match p.first() {
            None => n.is_empty(),
            Some(b'*') => (0..=n.len()).any(|k| go(&p[1..], &n[k..])),
            Some(b'%') => (0..=n.len())
                .take_while(|&k| k == 0 || n[k - 1] != b'/')
                .any(|k| go(&p[1..], &n[k..])),
            Some(&c) => n.first() == Some(&c) && go(&p[1..], &n[1..]),
        }
    }
    go(pattern.as_bytes(), name.as_bytes())
        || (pattern.eq_ignore_ascii_case("INBOX") && name == "INBOX")
}

/// A sequence or UID set as ranges; `*` is `max`.
fn parse_set(set: &str, max: u32) -> Option<Vec<(u32, u32)>> {
    let num = |s: &str| -> Option<u32> { if s == "*" { Some(max) } else { s.parse().ok() } };
    set.split(',')
        .map(|piece| {
            let (a, b) = match piece.split_once(':') {
                Some((a, b)) => (num(a)?, num(b)?),
                None => (num(piece)?, num(piece)?),
            };
            Some((a.min(b), a.max(b)))
        })
        .collect()
}

fn in_set(ranges: &[(u32, u32)], n: u32) -> bool {
    ranges.iter().any(|&(a, b)| a <= n && n <= b)
}

fn is_set(s: &str) -> bool {
    !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit() || b"*:,".contains(&b))
}

/// A search key (RFC 3501 6.4.4), the part popsync may use.
enum Key {
    And(Vec<Key>),
    Or(Box<Key>, Box<Key>),
    Not(Box<Key>),
    All,
    Header(String, Vec<u8>),
    Text(Vec<u8>),
    Body(Vec<u8>),
    Uid(Vec<(u32, u32)>),
    Seq(Vec<(u32, u32)>),
    Flag(String, bool),
    Larger(usize),
    Smaller(usize),
}

impl Key {
    fn matches(&self, seq: u32, m: &Stored) -> bool {
        match self {
            Key::And(keys) => keys.iter().all(|k| k.matches(seq, m)),
            Key::Or(a, b) => a.matches(seq, m) || b.matches(seq, m),
            Key::Not(k) => !k.matches(seq, m),
            Key::All => true,
            Key::Header(field, needle) => header_values(&m.bytes, field)
                .iter()
                .any(|v| contains_ci(v, needle)),
            Key::Text(needle) => contains_ci(&m.bytes, needle),
            Key::Body(needle) => contains_ci(body_of(&m.bytes), needle),
            Key::Uid(r) => in_set(r, m.uid),
            Key::Seq(r) => in_set(r, seq),
            Key::Flag(flag, set) => m.flags.iter().any(|f| f.eq_ignore_ascii_case(flag)) == *set,
            Key::Larger(n) => m.bytes.len() > *n,
            Key::Smaller(n) => m.bytes.len() < *n,
        }
    }
}

fn parse_key(toks: &[Tok], pos: &mut usize, mbox: &Mbox) -> Result<Key, String> {
    let tok = toks.get(*pos).ok_or("missing search key")?.clone();
    *pos += 1;
    let arg = |pos: &mut usize| -> Result<Tok, String> {
        let t = toks.get(*pos).ok_or("missing argument")?.clone();
        *pos += 1;
        Ok(t)
    };
    if tok == Tok::Open {
        let mut keys = Vec::new();
        while toks.get(*pos) != Some(&Tok::Close) {
            if *pos >= toks.len() {
                return Err("unbalanced parenthesis".into());
            }
            keys.push(parse_key(toks, pos, mbox)?);
        }
        *pos += 1;
        return Ok(Key::And(keys));
    }
    let word = tok.text().ok_or("unexpected parenthesis")?;
    let upper = word.to_ascii_uppercase();
    let string = |t: Tok| t.bytes().ok_or_else(|| "expected a string".to_owned());
    let max_uid = mbox.messages.last().map_or(0, |m| m.uid);
    Ok(match upper.as_str() {
        "ALL" => Key::All,
        "HEADER" => {
            let field = arg(pos)?.text().ok_or("expected a field name")?;
            Key::Header(field, string(arg(pos)?)?)
        }
        "SUBJECT" | "FROM" | "TO" | "CC" | "BCC" => Key::Header(upper.clone(), string(arg(pos)?)?),
        "TEXT" => Key::Text(string(arg(pos)?)?),
        "BODY" => Key::Body(string(arg(pos)?)?),
        "UID" => {
            let set = arg(pos)?.text().ok_or("expected a UID set")?;
            Key::Uid(parse_set(&set, max_uid).ok_or("bad UID set")?)
        }
        "OR" => {
            let a = parse_key(toks, pos, mbox)?;
            let b = parse_key(toks, pos, mbox)?;
            Key::Or(Box::new(a), Box::new(b))
        }
        "NOT" => Key::Not(Box::new(parse_key(toks, pos, mbox)?)),
        "SEEN" | "ANSWERED" | "FLAGGED" | "DELETED" | "DRAFT" => {
            Key::Flag(format!("\\{word}"), true)
        }
        "UNSEEN" | "UNANSWERED" | "UNFLAGGED" | "UNDELETED" | "UNDRAFT" => {
            Key::Flag(format!("\\{}", &word[2..]), false)
        }
        "KEYWORD" => Key::Flag(arg(pos)?.text().ok_or("expected a keyword")?, true),
        "UNKEYWORD" => Key::Flag(arg(pos)?.text().ok_or("expected a keyword")?, false),
        "LARGER" | "SMALLER" => {
            let n: usize = arg(pos)?
                .text()
                .and_then(|s| s.parse().ok())
                .ok_or("expected a number")?;
            if upper == "LARGER" {
                Key::Larger(n)
            } else {
                Key::Smaller(n)
            }
        }
        _ if is_set(&word) => {
            Key::Seq(parse_set(&word, mbox.messages.len() as u32).ok_or("bad sequence set")?)
        }
        _ => return Err(format!("unsupported search key {word}")),
    })
}

fn contains_ci(hay: &[u8], needle: &[u8]) -> bool {
    if needle.is_empty() {
        return true;
    }
    let hay = hay.to_ascii_lowercase();
    let needle = needle.to_ascii_lowercase();
    hay.windows(needle.len()).any(|w| w == needle.as_slice())
}

/// Where the header section ends (after the blank line).
fn header_end(bytes: &[u8]) -> usize {
    let mut i = 0;
    while i < bytes.len() {
        let nl = bytes[i..]
            .iter()
            .position(|&b| b == b'\n')
            .map_or(bytes.len(), |p| i + p + 1);
        let line = &bytes[i..nl];
        if line == b"\r\n" || line == b"\n" {
            return nl;
        }
        i = nl;
    }
    bytes.len()
}

fn body_of(bytes: &[u8]) -> &[u8] {
    &bytes[header_end(bytes)..]
}

/// The header fields of a message: (name, unfolded value), in order.
fn header_fields(bytes: &[u8]) -> Vec<(String, Vec<u8>, Vec<u8>)> {
    let head = &bytes[..header_end(bytes)];
    let mut fields: Vec<(String, Vec<u8>, Vec<u8>)> = Vec::new();
    for line in head.split_inclusive(|&b| b == b'\n') {
        if line == b"\r\n" || line == b"\n" {
            break;
        }
        if matches!(line.first(), Some(b' ' | b'\t')) {
            if let Some(last) = fields.last_mut() {
                last.1.extend_from_slice(line);
                last.2.extend_from_slice(line);
            }
            continue;
        }
        let colon = line.iter().position(|&b| b == b':').unwrap_or(line.len());
        let name = String::from_utf8_lossy(&line[..colon]).trim().to_owned();
        let value = line.get(colon + 1..).unwrap_or_default().to_vec();
        fields.push((name, value, line.to_vec()));
    }
    for f in &mut fields {
        f.1.retain(|&b| b != b'\r' && b != b'\n');
    }
    fields
}

fn header_values(bytes: &[u8], field: &str) -> Vec<Vec<u8>> {
    header_fields(bytes)
        .into_iter()
        .filter(|(name, _, _)| name.eq_ignore_ascii_case(field))
        .map(|(_, value, _)| value)
        .collect()
}

fn literal(bytes: &[u8]) -> Vec<u8> {
    let mut out = format!("{{{}}}\r\n", bytes.len()).into_bytes();
    out.extend_from_slice(bytes);
    out
}

/// One FETCH data item for `m`; None if the item is not supported.
fn fetch_item(item: &str, m: &Stored) -> Option<Vec<u8>> {
    let date = m
        .internaldate
        .clone()
        .unwrap_or_else(|| "01-Jan-2026 00:00:00 +0000".to_owned());
    let header = &m.bytes[..header_end(&m.bytes)];
    Some(match item {
        "UID" => format!("UID {}", m.uid).into_bytes(),
        "FLAGS" => format!("FLAGS ({})", m.flags.join(" ")).into_bytes(),
        "INTERNALDATE" => format!("INTERNALDATE {}", quoted(&date)).into_bytes(),
        "RFC822.SIZE" => format!("RFC822.SIZE {}", m.bytes.len()).into_bytes(),
        "RFC822" | "BODY[]" | "BODY.PEEK[]" => {
            let name = if item == "RFC822" { "RFC822" } else { "BODY[]" };
            let mut out = format!("{name} ").into_bytes();
            out.extend(literal(&m.bytes));
            out
        }
        "RFC822.HEADER" | "BODY[HEADER]" | "BODY.PEEK[HEADER]" => {
            let name = if item == "RFC822.HEADER" {
                "RFC822.HEADER"
            } else {
                "BODY[HEADER]"
            };
            let mut out = format!("{name} ").into_bytes();
            out.extend(literal(header));
            out
        }
        "RFC822.TEXT" | "BODY[TEXT]" | "BODY.PEEK[TEXT]" => {
            let mut out = b"BODY[TEXT] ".to_vec();
            out.extend(literal(body_of(&m.bytes)));
            out
        }
        _ => {
            let section = item
                .strip_prefix("BODY.PEEK[")
                .or_else(|| item.strip_prefix("BODY["))?
                .strip_suffix(']')?;
            let (not, list) = if let Some(l) = section.strip_prefix("HEADER.FIELDS.NOT") {
                (true, l)
            } else {
                (false, section.strip_prefix("HEADER.FIELDS")?)
            };
            let names: Vec<String> = list
                .trim()
                .trim_start_matches('(')
                .trim_end_matches(')')
                .split_whitespace()
                .map(|s| s.trim_matches('"').to_ascii_uppercase())
                .collect();
            let mut picked = Vec::new();
            for (name, _, raw) in header_fields(&m.bytes) {
                if names.contains(&name.to_ascii_uppercase()) != not {
                    picked.extend_from_slice(&raw);
                }
            }
            picked.extend_from_slice(b"\r\n");
            let mut out = format!("BODY[{section}] ").into_bytes();
            out.extend(literal(&picked));
            out
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn literal_markers_are_recognised() {
        assert_eq!(literal_at_end(b"a APPEND INBOX {12}"), Some((12, false)));
        assert_eq!(literal_at_end(b"a APPEND INBOX {12+}"), Some((12, true)));
        assert_eq!(literal_at_end(b"a NOOP"), None);
    }
}
