//! A scripted POP3 server for fault injection, for the black-box tests of
//! how popsync copes with a server that misbehaves. The real binary runs
//! against it through the one harness, `common::TestEnv` (`fault_config`,
//! `run_fault` below); a test binary using this module says `mod common;` too.
//!
//! The server is small and honest where it does not misbehave on purpose: it
//! serves a mailbox over plain TCP (or implicit TLS with a certificate made in
//! the test), dot-stuffs with CRLF, takes USER/PASS and AUTH (PLAIN, LOGIN,
//! XOAUTH2, OAUTHBEARER, SCRAM-SHA-1, SCRAM-SHA-256; the initial response on
//! the AUTH line or after an empty "+ " challenge; which ones it announces is
//! up to the CAPA lines a test gives), APOP when asked to (`apop`), UTF8
//! (RFC 6856) before login, and applies DELEs only at QUIT, like a real
//! server. Its state (mailbox, faults, the commands it was sent, SASL
//! answers included) outlives a connection, so a test can run popsync
//! against a broken server, heal it, and run again.
//!
//! Two modes hold popsync to the pipelining rules of RFC 2449 the way real
//! servers do: `login_handoff` (Courier's login front end: whatever arrived
//! before the reply to a state-changing command, or before a delayed
//! greeting, is thrown away) and `strict_no_pipelining` (no PIPELINING in
//! CAPA, and a command that arrives before the previous reply was written
//! is answered `-ERR`, as Cyrus does). Either way the server also records
//! what was sent ahead (`ahead`) and what it threw away (`discarded`).
//!
//! ```ignore
//! mod fault;
//! use fault::{Fault, FaultServer, On};
//! let srv = FaultServer::builder()
//!     .messages(vec![b"Subject: a\n\nhi\n".to_vec(), b"Subject: b\n\nho\n".to_vec()])
//!     .fault(On::Retr(2), Fault::DropAfter(100))
//!     .times(1) // only the first time RETR 2 is asked for
//!     .start();
//! let env = common::TestEnv::new();
//! let out = env.run_fault(&srv, 5, "", &["fetch", "--all"], None);
//! assert!(!srv.commands().iter().any(|c| c == "QUIT"));
//! ```
//!
//! Each test file says `mod fault;` and uses what it needs; hence `dead_code`.
#![allow(dead_code)]

use std::path::{Path, PathBuf};

use std::sync::{Arc, Mutex, MutexGuard};
use std::thread;
use std::time::{Duration, Instant};

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::rustls;

/// The longest a fault keeps a connection open waiting for the client to
/// leave (stalls without an explicit duration, a missing terminator).
const MAX_HOLD: Duration = Duration::from_secs(60);

/// The longest command line the server reads; a longer one ends the
/// connection (popsync never sends one).
const MAX_COMMAND: usize = 64 * 1024;

/// What a fault is attached to: a moment of the session or a command.
/// `Retr(n)` matches only RETR of message n; the others match any arguments.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum On {
    /// Before the TLS handshake of an implicit-TLS server (see `Fault`).
    TlsHandshake,
    Greeting,
    Capa,
    /// `UTF8` (RFC 6856), accepted in AUTHORIZATION state.
    Utf8,
    User,
    Pass,
    /// `APOP` (only with `Builder::apop`).
    Apop,
    /// The final reply to AUTH (after the SASL payload).
    Auth,
    Uidl,
    List,
    Stat,
    Retr(u32),
    Top,
    Dele,
    Rset,
    Noop,
    Quit,
}

/// What goes wrong. A fault that replaces the reply (`Err`, `Raw`) also
/// cancels the command's effect (no login, no DELE mark, no commit at QUIT);
/// the others keep it: the server did the work and the reply got lost.
///
/// At `On::TlsHandshake`: `Stall(d)` waits d, `Raw(bytes)` sends the bytes
/// instead of a ServerHello, anything else reads the ClientHello; then the
/// connection is closed in every case.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Fault {
    /// Reply `-ERR TEXT` instead, e.g. `Fault::err("[IN-USE] locked")`.
    Err(String),
    /// Send only the first K octets of the real reply, then close.
    DropAfter(usize),
    /// Send nothing for this long (the socket stays open), then the real reply.
    Stall(Duration),
    /// Send the real reply one octet at a time, pausing this long before each.
    Trickle(Duration),
    /// Send these octets instead of the reply, then carry on reading commands:
    /// a malformed status line (`Fault::malformed`), binary garbage.
    Raw(Vec<u8>),
    /// Send the reply without its ".\r\n" terminator (whole if single-line),
    /// then close (`close`), or hold the socket open until the client leaves.
    NoTerminator { close: bool },
    /// "+OK", then valid-looking lines forever, until the client disconnects.
    Endless,
    /// Like `Endless`, one line at a time with this pause before each: a
    /// server that never stops, and never stalls long enough to time out.
    EndlessEvery(Duration),
    /// "+OK", then one line of this many octets, then the terminator.
    LongLine(usize),
}

impl Fault {
    /// `-ERR TEXT`.
    pub fn err(text: &str) -> Fault {
        Fault::Err(text.to_owned())
    }

    /// This line (CRLF added) instead of the status line.
    pub fn malformed(line: &str) -> Fault {
        Fault::Raw(format!("{line}\r\n").into_bytes())
    }

    /// Binary garbage instead of the reply, ending in CRLF like a line:
    /// terminal escapes first (a title change, a bell), then every octet
    /// but CR and LF.
    pub fn garbage() -> Fault {
        let mut bytes = b"\x1b]0;owned\x07\x1b[2J".to_vec();
        bytes.extend((0u8..=255).filter(|b| !matches!(b, b'\r' | b'\n')));
        bytes.extend_from_slice(b"\r\n");
        Fault::Raw(bytes)
    }
}

/// One line a client sent, as the server saw it (`FaultServer::transcript`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Line {
    /// Without CRLF; secrets as sent.
    pub text: String,
    /// It had arrived before the server finished writing the reply before
    /// it (the greeting for the first line, the challenge for a SASL
    /// answer): the client did not wait for that reply.
    pub ahead: bool,
    /// Thrown away unanswered (`greeting_delay`, `login_handoff`).
    pub discarded: bool,
    /// Read in TRANSACTION state: after the reply that completed the login
    /// was written (lines thrown away at that reply count as before).
    pub logged_in: bool,
}

/// One fault and how many more times it may fire (`None`: always).
#[derive(Debug, Clone)]
struct Rule {
    on: On,
    fault: Fault,
    remaining: Option<u32>,
}

#[derive(Debug, Clone)]
struct Msg {
    /// Identity across connections, so QUIT removes the right messages.
    id: u64,
    body: Vec<u8>,
    uidl: String,
    /// What LIST says instead of the true size (a lying server).
    list_size: Option<u64>,
}

#[derive(Debug)]
struct State {
    mailbox: Vec<Msg>,
    next_id: u64,
    rules: Vec<Rule>,
    /// The lines each connection sent, in order, secrets included.
    sessions: Vec<Vec<String>>,
    /// Per connection, the lines that had already arrived when the server
    /// finished writing the reply before them (the greeting for the first):
    /// sent without waiting for that reply.
    ahead: Vec<Vec<String>>,
    /// Per connection, every line with what the server knew of it.
    transcripts: Vec<Vec<Line>>,
    /// Per connection, the lines the server threw away unanswered: sent
    /// before a delayed greeting or before the reply to a state-changing
    /// command of a `login_handoff` server.
    discarded: Vec<Vec<String>>,
    /// Connections still being served.
    active: usize,
    capa: Vec<String>,
    /// The CAPA lines in TRANSACTION state, if not the same as before login.
    capa_after_login: Option<Vec<String>>,
    /// Hold the greeting this long, then throw away what arrived meanwhile.
    greeting_delay: Option<Duration>,
    /// Throw away what arrived before the reply to USER, PASS, APOP, AUTH
    /// (each challenge and the final reply) and UTF8.
    handoff: bool,
    /// Answer `-ERR` to any line that arrived before the previous reply was
    /// written.
    strict: bool,
    /// The APOP timestamp of the greeting (`<...>`), when APOP is offered.
    apop_stamp: Option<String>,
    user: String,
    password: String,
    /// The JSON an OAuth mechanism sends as its error challenge.
    oauth_error: String,
    /// SCRAM: send a server signature that does not match (an impostor).
    scram_bad_signature: bool,
}

impl State {
    /// The fault for `on`, if one is armed; counts it as fired.
    fn fire(&mut self, on: On) -> Option<Fault> {
        let rule = self
            .rules
            .iter_mut()
            .find(|r| r.on == on && r.remaining != Some(0))?;
        if let Some(n) = &mut rule.remaining {
            *n -= 1;
        }
        Some(rule.fault.clone())
    }
}

/// Sets up a `FaultServer`. Defaults: no messages, user "alice", password
/// "secret", CAPA `USER UIDL TOP PIPELINING RESP-CODES`, plain TCP.
pub struct Builder {
    bodies: Vec<Vec<u8>>,
    uidls: Option<Vec<String>>,
    list_sizes: Vec<(u32, u64)>,
    rules: Vec<Rule>,
    capa: Vec<String>,
    user: String,
    password: String,
    tls: bool,
    oauth_error: String,
    scram_bad_signature: bool,
    capa_after_login: Option<Vec<String>>,
    greeting_delay: Option<Duration>,
    handoff: bool,
    strict: bool,
    apop: bool,
}

/// How long a `login_handoff` server delays the greeting.
pub const HANDOFF_GREETING_DELAY: Duration = Duration::from_millis(200);

/// How long a `login_handoff` server (before the reply to a state-changing
/// command) and a `strict_no_pipelining` one (before every reply) keep
/// reading before they answer, so that a line the client pipelined has
/// arrived by then whatever the scheduling: an honest client sends nothing
/// in that time, a pipelining one is caught every time.
pub const GRACE: Duration = Duration::from_millis(20);

/// The text of the `-ERR` a `strict_no_pipelining` server answers to a
/// pipelined command.
pub const PIPELINED_ERR: &str = "Unrecognized command (pipelined; PIPELINING was not offered)";

/// The error status an OAuth server sends for a bad token (RFC 7628 3.2.2).
pub const OAUTH_ERROR_JSON: &str =
    r#"{"status":"invalid_token","schemes":"bearer","scope":"https://mail.example.org/pop"}"#;

impl Builder {
    /// The mailbox, in message-number order; bodies with LF line ends.
    pub fn messages(mut self, bodies: Vec<Vec<u8>>) -> Self {
        self.bodies = bodies;
        self
    }

    /// UIDLs of the messages, in order (duplicates allowed); default
    /// `uid-1`, `uid-2`, ...
    pub fn uidls(mut self, uidls: &[&str]) -> Self {
        self.uidls = Some(uidls.iter().map(|u| (*u).to_owned()).collect());
        self
    }

    /// Make LIST report `size` for message `msg` (1-based), whatever it is.
    pub fn list_size(mut self, msg: u32, size: u64) -> Self {
        self.list_sizes.push((msg, size));
        self
    }

    /// The CAPA lines (without the terminator). An empty list makes CAPA
    /// answer -ERR, like an RFC 1939-only server.
    pub fn capa(mut self, lines: &[&str]) -> Self {
        self.capa = lines.iter().map(|l| (*l).to_owned()).collect();
        self
    }

    /// The user and password; for XOAUTH2 and OAUTHBEARER the password is
    /// the bearer token the server accepts.
    pub fn credentials(mut self, user: &str, password: &str) -> Self {
        self.user = user.to_owned();
        self.password = password.to_owned();
        self
    }

    /// The JSON that XOAUTH2 and OAUTHBEARER send (base64, as a "+ "
    /// challenge) when the token is wrong; default `OAUTH_ERROR_JSON`. After
    /// the client's answer to it the server says `-ERR [AUTH] ...`.
    pub fn oauth_error(mut self, json: &str) -> Self {
        self.oauth_error = json.to_owned();
        self
    }

    /// SCRAM-SHA-1/-256: accept the client's proof but send a wrong server
    /// signature (`v=`), as a server that does not really know the password
    /// (an impostor) would. It logs the client in only if the client then
    /// answers the final challenge anyway.
    pub fn scram_bad_signature(mut self) -> Self {
        self.scram_bad_signature = true;
        self
    }

    /// Different CAPA lines in TRANSACTION state (after login); the lines of
    /// `capa` stay those before login.
    pub fn capa_after_login(mut self, lines: &[&str]) -> Self {
        self.capa_after_login = Some(lines.iter().map(|l| (*l).to_owned()).collect());
        self
    }

    /// Hold the greeting for `d`, then throw away whatever the client sent
    /// meanwhile (recorded in `sessions`, `ahead` and `discarded`): a client
    /// that talks before the greeting loses those commands.
    pub fn greeting_delay(mut self, d: Duration) -> Self {
        self.greeting_delay = Some(d);
        self
    }

    /// Courier's login front end: the greeting comes after
    /// `HANDOFF_GREETING_DELAY`, and before it answers a state-changing
    /// command (USER, PASS, APOP, each step and the end of AUTH, UTF8) the
    /// server waits `GRACE`, then throws away everything it has received
    /// beyond that command (another process takes the connection over).
    /// CAPA is left as it is (Courier lists PIPELINING).
    pub fn login_handoff(mut self) -> Self {
        self.handoff = true;
        self.greeting_delay.get_or_insert(HANDOFF_GREETING_DELAY);
        self
    }

    /// A strict server without pipelining: PIPELINING is taken out of CAPA
    /// (before and after login), and a line that arrived before the reply
    /// to the previous one was written (the greeting for the first; within
    /// AUTH, before the challenge it answers) is answered `PIPELINED_ERR`
    /// instead, without effect; within AUTH it ends the exchange with -ERR.
    /// Every reply waits `GRACE` first, so pipelined lines are caught.
    pub fn strict_no_pipelining(mut self) -> Self {
        self.strict = true;
        self
    }

    /// Offer APOP: the greeting carries a timestamp, and `APOP USER DIGEST`
    /// (MD5 of the timestamp and the password, RFC 1939) logs in.
    pub fn apop(mut self) -> Self {
        self.apop = true;
        self
    }

    /// Arm a fault; it fires every time unless `times` follows.
    pub fn fault(mut self, on: On, fault: Fault) -> Self {
        self.rules.push(Rule {
            on,
            fault,
            remaining: None,
        });
        self
    }

    /// The fault armed last fires only its first `n` times (`times(1)`:
    /// one-shot; with one firing per session, "the first n connections").
    pub fn times(mut self, n: u32) -> Self {
        if let Some(rule) = self.rules.last_mut() {
            rule.remaining = Some(n);
        }
        self
    }

    /// Serve implicit TLS with a certificate for 127.0.0.1 signed by a CA
    /// made for this server (see `FaultServer::fingerprint`, `ca_pem_path`).
    pub fn tls(mut self) -> Self {
        self.tls = true;
        self
    }

    /// Bind 127.0.0.1 on a free port and serve on a thread of its own.
    pub fn start(self) -> FaultServer {
        let uidls = self.uidls.unwrap_or_else(|| {
            (1..=self.bodies.len())
                .map(|i| format!("uid-{i}"))
                .collect()
        });
        assert_eq!(uidls.len(), self.bodies.len(), "one UIDL per message");
        let mailbox: Vec<Msg> = self
            .bodies
            .into_iter()
            .zip(uidls)
            .enumerate()
            .map(|(i, (body, uidl))| Msg {
                id: i as u64,
                body,
                uidl,
                list_size: self
                    .list_sizes
                    .iter()
                    .find(|(m, _)| *m as usize == i + 1)
                    .map(|(_, s)| *s),
            })
            .collect();
        let strict = self.strict;
        let without_pipelining = |lines: Vec<String>| -> Vec<String> {
            if !strict {
                return lines;
            }
            lines
                .into_iter()
                .filter(|l| !l.eq_ignore_ascii_case("PIPELINING"))
                .collect()
        };
        let state = Arc::new(Mutex::new(State {
            next_id: mailbox.len() as u64,
            mailbox,
            rules: self.rules,
            sessions: Vec::new(),
            ahead: Vec::new(),
            transcripts: Vec::new(),
            discarded: Vec::new(),
            active: 0,
            capa: without_pipelining(self.capa),
            capa_after_login: self.capa_after_login.map(without_pipelining),
            greeting_delay: self.greeting_delay,
            handoff: self.handoff,
            strict: self.strict,
            apop_stamp: self.apop.then(|| {
                let nanos = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0, |d| d.subsec_nanos());
                format!("<{}.{nanos}@fault.example>", std::process::id())
            }),
            user: self.user,
            password: self.password,
            oauth_error: self.oauth_error,
            scram_bad_signature: self.scram_bad_signature,
        }));
        let tls = self.tls.then(TestTls::new);
        let acceptor = tls.as_ref().map(|t| t.acceptor.clone());

        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
        let port = listener.local_addr().expect("local address").port();
        listener
            .set_nonblocking(true)
            .expect("non-blocking listener");
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let served = state.clone();
        let thread = thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("test runtime");
            runtime.block_on(async move {
                let listener = tokio::net::TcpListener::from_std(listener).expect("tokio listener");
                tokio::select! {
                    _ = accept_loop(listener, served, acceptor) => {}
                    _ = stopped => {}
                }
            });
            // Connections still open (a stall, an endless reply) end here.
            runtime.shutdown_timeout(Duration::from_millis(200));
        });
        FaultServer {
            port,
            state,
            tls,
            stop: Some(stop),
            thread: Some(thread),
        }
    }
}

/// A running scripted server; stops when dropped.
pub struct FaultServer {
    port: u16,
    state: Arc<Mutex<State>>,
    tls: Option<TestTls>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<thread::JoinHandle<()>>,
}

impl FaultServer {
    pub fn builder() -> Builder {
        Builder {
            bodies: Vec::new(),
            uidls: None,
            list_sizes: Vec::new(),
            rules: Vec::new(),
            capa: ["USER", "UIDL", "TOP", "PIPELINING", "RESP-CODES"]
                .iter()
                .map(|s| (*s).to_owned())
                .collect(),
            user: "alice".into(),
            password: "secret".into(),
            tls: false,
            oauth_error: OAUTH_ERROR_JSON.to_owned(),
            scram_bad_signature: false,
            capa_after_login: None,
            greeting_delay: None,
            handoff: false,
            strict: false,
            apop: false,
        }
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// How popsync names this server in messages: `127.0.0.1:PORT`.
    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// Wait (at most 5 s) until no connection is being served, so that
    /// what the server saw is complete once popsync has exited: the server
    /// may not have read the last lines of a client that hung up yet.
    pub fn settle(&self) {
        let started = Instant::now();
        while self.state().active > 0 && started.elapsed() < Duration::from_secs(5) {
            thread::sleep(Duration::from_millis(5));
        }
    }

    fn state(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock is a bug in this module; the state
        // is still worth reading to explain a failing test.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Every line clients sent, all connections in order, without CRLF.
    /// PASS and AUTH payloads are kept as sent. Like every accessor of what
    /// happened, it first waits for open connections to end (`settle`).
    pub fn commands(&self) -> Vec<String> {
        self.settle();
        self.state().sessions.concat()
    }

    /// The lines each connection sent, one list per connection.
    pub fn sessions(&self) -> Vec<Vec<String>> {
        self.settle();
        self.state().sessions.clone()
    }

    /// The lines connection `i` (0-based) sent; empty if there was none.
    pub fn session(&self, i: usize) -> Vec<String> {
        self.settle();
        self.state().sessions.get(i).cloned().unwrap_or_default()
    }

    /// The lines of connection `i` that the client sent without waiting for
    /// the reply before them (the greeting for the first line; for a SASL
    /// answer, the challenge it answers): pipelined. Exact when the server
    /// held that reply back (`Fault::Stall`, `GRACE` in the strict and
    /// hand-off modes) long enough for them to arrive.
    pub fn ahead(&self, i: usize) -> Vec<String> {
        lock(&self.state).ahead.get(i).cloned().unwrap_or_default()
    }

    /// Every line of connection `i` with what the server knew of it: sent
    /// ahead of a reply, thrown away, sent after login.
    pub fn transcript(&self, i: usize) -> Vec<Line> {
        self.settle();
        self.state().transcripts.get(i).cloned().unwrap_or_default()
    }

    /// `transcript` of every connection, in order.
    pub fn transcripts(&self) -> Vec<Vec<Line>> {
        self.settle();
        self.state().transcripts.clone()
    }

    /// Where clients broke the pipelining rules (RFC 2449 as DESIGN.md
    /// reads it), one description per breach, all connections; empty when
    /// they kept them:
    /// - nothing is sent before the greeting, and nothing is thrown away;
    /// - in AUTHORIZATION state every line waits for the reply before it
    ///   (CAPA, UTF8, USER, PASS, APOP, AUTH and each SASL answer);
    /// - after login, a line may be sent ahead of a reply only if this
    ///   server's CAPA after login lists PIPELINING and the client asked
    ///   CAPA after login and had its reply before the line it sent ahead
    ///   of the previous reply (so neither CAPA nor the first command after
    ///   it is ever ahead);
    /// - nothing follows QUIT.
    pub fn pipelining_breaches(&self) -> Vec<String> {
        self.settle();
        let state = self.state();
        let capa = state.capa_after_login.as_ref().unwrap_or(&state.capa);
        let offered = capa.iter().any(|c| c.eq_ignore_ascii_case("PIPELINING"));
        let mut breaches = Vec::new();
        for (i, transcript) in state.transcripts.iter().enumerate() {
            let texts: Vec<&str> = transcript.iter().map(|l| l.text.as_str()).collect();
            let mut capa_after_login = None;
            let mut quit = false;
            for (n, line) in transcript.iter().enumerate() {
                let what = |why: &str| {
                    format!(
                        "connection {i}, line {n} {:?}: {why}; all: {texts:?}",
                        line.text
                    )
                };
                if quit {
                    breaches.push(what("sent after QUIT"));
                }
                quit |= line.text.eq_ignore_ascii_case("QUIT");
                if line.discarded {
                    breaches.push(what(
                        "thrown away (sent before the greeting or a login reply)",
                    ));
                    continue;
                }
                if line.logged_in
                    && capa_after_login.is_none()
                    && line.text.eq_ignore_ascii_case("CAPA")
                {
                    capa_after_login = Some(n);
                }
                if !line.ahead {
                    continue;
                }
                if n == 0 {
                    breaches.push(what("sent before the greeting"));
                } else if !line.logged_in {
                    breaches.push(what("sent ahead of a reply before login"));
                } else if !offered {
                    breaches.push(what(
                        "pipelined, but the CAPA after login has no PIPELINING",
                    ));
                } else if capa_after_login.is_none_or(|c| n <= c + 1) {
                    breaches.push(what("pipelined before the reply to the CAPA after login"));
                }
            }
        }
        breaches
    }

    /// `ahead` of every connection, once they have ended (`settle`).
    pub fn ahead_all(&self) -> Vec<Vec<String>> {
        self.settle();
        self.state().ahead.clone()
    }

    /// The lines connection `i` sent that the server threw away unanswered
    /// (`greeting_delay`, `login_handoff`); they are in `session(i)` too.
    pub fn discarded(&self, i: usize) -> Vec<String> {
        self.settle();
        self.state().discarded.get(i).cloned().unwrap_or_default()
    }

    /// `discarded` of every connection.
    pub fn discarded_all(&self) -> Vec<Vec<String>> {
        self.settle();
        self.state().discarded.clone()
    }

    /// How many connections were accepted so far.
    pub fn connections(&self) -> usize {
        self.settle();
        self.state().sessions.len()
    }

    /// The messages still on the server (bodies as given, LF line ends).
    pub fn mailbox(&self) -> Vec<Vec<u8>> {
        self.settle();
        self.state()
            .mailbox
            .iter()
            .map(|m| m.body.clone())
            .collect()
    }

    /// The UIDLs of the messages still on the server.
    pub fn uidls(&self) -> Vec<String> {
        self.settle();
        self.state()
            .mailbox
            .iter()
            .map(|m| m.uidl.clone())
            .collect()
    }

    /// Renumber the mailbox: new UIDLs for the messages on the server, in order.
    pub fn set_uidls(&self, uidls: &[&str]) {
        let mut state = self.state();
        assert_eq!(uidls.len(), state.mailbox.len(), "one UIDL per message");
        for (m, u) in state.mailbox.iter_mut().zip(uidls) {
            m.uidl = (*u).to_owned();
        }
    }

    /// New mail arrives (appended, so it gets the next message number).
    pub fn add_message(&self, body: &[u8], uidl: &str) {
        let mut state = self.state();
        let id = state.next_id;
        state.next_id += 1;
        state.mailbox.push(Msg {
            id,
            body: body.to_vec(),
            uidl: uidl.to_owned(),
            list_size: None,
        });
    }

    /// Arm a fault while running (fires every time; see `fault_times`).
    pub fn fault(&self, on: On, fault: Fault) {
        self.fault_times(on, fault, None);
    }

    /// Arm a fault that fires at most `times` times (`None`: always).
    pub fn fault_times(&self, on: On, fault: Fault, times: Option<u32>) {
        self.state().rules.push(Rule {
            on,
            fault,
            remaining: times,
        });
    }

    /// Remove every fault: the server behaves from now on.
    pub fn heal(&self) {
        self.state().rules.clear();
    }

    /// The pin for popsync's `tls_fingerprint`: `sha256:AB:CD:...` of the
    /// server certificate. Panics unless built with `tls()`.
    pub fn fingerprint(&self) -> String {
        self.tls
            .as_ref()
            .expect("built with .tls()")
            .fingerprint
            .clone()
    }

    /// A PEM file with the CA that signed the server certificate, for
    /// popsync's `ca_file`. Panics unless built with `tls()`.
    pub fn ca_pem_path(&self) -> &Path {
        &self.tls.as_ref().expect("built with .tls()").ca_path
    }
}

impl Drop for FaultServer {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// A CA and a server certificate for 127.0.0.1 (and "localhost"), made per
/// server; the CA's PEM lives in a temp dir that goes with the server.
struct TestTls {
    acceptor: TlsAcceptor,
    fingerprint: String,
    ca_path: PathBuf,
    _dir: tempfile::TempDir,
}

impl TestTls {
    fn new() -> TestTls {
        use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};
        let ca_key = KeyPair::generate().expect("CA key");
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "popsync fault server test CA");
        let ca_cert = ca_params.self_signed(&ca_key).expect("CA certificate");
        let issuer = Issuer::new(ca_params, ca_key);

        let key = KeyPair::generate().expect("server key");
        let params = CertificateParams::new(vec!["127.0.0.1".to_owned(), "localhost".to_owned()])
            .expect("server params");
        let cert = params.signed_by(&key, &issuer).expect("server certificate");

        let digest = ring::digest::digest(&ring::digest::SHA256, cert.der().as_ref());
        let hex: Vec<String> = digest.as_ref().iter().map(|b| format!("{b:02X}")).collect();
        let fingerprint = format!("sha256:{}", hex.join(":"));

        let dir = tempfile::tempdir().expect("temp dir for the CA");
        let ca_path = dir.path().join("ca.pem");
        std::fs::write(&ca_path, ca_cert.pem()).expect("write CA PEM");

        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let key_der =
            rustls::pki_types::PrivateKeyDer::try_from(key.serialize_der()).expect("key DER");
        let config = rustls::ServerConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
            .expect("TLS versions")
            .with_no_client_auth()
            .with_single_cert(vec![cert.der().clone()], key_der)
            .expect("server TLS config");
        TestTls {
            acceptor: TlsAcceptor::from(Arc::new(config)),
            fingerprint,
            ca_path,
            _dir: dir,
        }
    }
}

async fn accept_loop(
    listener: tokio::net::TcpListener,
    state: Arc<Mutex<State>>,
    acceptor: Option<TlsAcceptor>,
) {
    loop {
        let Ok((tcp, _)) = listener.accept().await else {
            continue;
        };
        let _ = tcp.set_nodelay(true);
        let index = {
            let mut s = lock(&state);
            s.sessions.push(Vec::new());
            s.ahead.push(Vec::new());
            s.transcripts.push(Vec::new());
            s.discarded.push(Vec::new());
            s.active += 1;
            s.sessions.len() - 1
        };
        let state = state.clone();
        let acceptor = acceptor.clone();
        tokio::spawn(async move {
            match acceptor {
                None => serve(tcp, state.clone(), index).await,
                Some(acceptor) => serve_tls(tcp, acceptor, state.clone(), index).await,
            }
            lock(&state).active -= 1;
        });
    }
}

fn lock(state: &Mutex<State>) -> MutexGuard<'_, State> {
    state.lock().unwrap_or_else(|e| e.into_inner())
}

async fn serve_tls(mut tcp: TcpStream, acceptor: TlsAcceptor, state: Arc<Mutex<State>>, i: usize) {
    let fault = lock(&state).fire(On::TlsHandshake);
    if let Some(fault) = fault {
        match fault {
            Fault::Stall(d) => tokio::time::sleep(d).await,
            Fault::Raw(bytes) => {
                let _ = tcp.write_all(&bytes).await;
            }
            _ => {
                let mut hello = [0u8; 512];
                let _ = tokio::time::timeout(Duration::from_secs(5), tcp.read(&mut hello)).await;
            }
        }
        return;
    }
    if let Ok(Ok(stream)) = tokio::time::timeout(MAX_HOLD, acceptor.accept(tcp)).await {
        serve(stream, state, i).await;
    }
}

/// Serve one connection to the end; any I/O error just ends it.
async fn serve<S: AsyncRead + AsyncWrite + Unpin>(
    stream: S,
    state: Arc<Mutex<State>>,
    index: usize,
) {
    let mut conn = Conn {
        stream,
        inbuf: Vec::new(),
        state,
        index,
        user: None,
        snapshot: None,
        deleted: Vec::new(),
        ahead: 0,
        handoff: false,
        strict: false,
        refused_ahead: false,
    };
    let _ = conn.run().await;
}

/// A reply as the honest server would send it.
struct Reply {
    bytes: Vec<u8>,
    multiline: bool,
    effect: Effect,
}

/// What a command changes, applied unless its fault replaced the reply.
enum Effect {
    None,
    User(String),
    Login,
    Dele(usize),
    Rset,
    /// Commit the DELEs (if logged in) and close.
    Quit,
}

impl Reply {
    fn ok(text: &str) -> Reply {
        Reply::single(format!("+OK {text}"), Effect::None)
    }

    fn err(text: &str) -> Reply {
        Reply::single(format!("-ERR {text}"), Effect::None)
    }

    fn single(line: String, effect: Effect) -> Reply {
        Reply {
            bytes: format!("{line}\r\n").into_bytes(),
            multiline: false,
            effect,
        }
    }

    /// "+OK FIRST", then `body` dot-stuffed with CRLF, then ".\r\n".
    fn multi(first: &str, body: &[u8]) -> Reply {
        let mut bytes = format!("+OK {first}\r\n").into_bytes();
        bytes.extend_from_slice(&stuff(body));
        bytes.extend_from_slice(b".\r\n");
        Reply {
            bytes,
            multiline: true,
            effect: Effect::None,
        }
    }
}

/// LF lines to CRLF lines with dot-stuffing; a last line without LF gets CRLF.
fn stuff(body: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(body.len() + body.len() / 16 + 2);
    let mut lines: Vec<&[u8]> = body.split(|&b| b == b'\n').collect();
    if body.ends_with(b"\n") || body.is_empty() {
        lines.pop();
    }
    for line in lines {
        if line.starts_with(b".") {
            out.push(b'.');
        }
        out.extend_from_slice(line);
        out.extend_from_slice(b"\r\n");
    }
    out
}

/// RFC 1939 size: octets of the message with CRLF line ends, unstuffed.
fn wire_size(body: &[u8]) -> u64 {
    let lf = body.iter().filter(|&&b| b == b'\n').count();
    let unterminated = usize::from(!body.is_empty() && !body.ends_with(b"\n"));
    (body.len() + lf + 2 * unterminated) as u64
}

struct Conn<S> {
    stream: S,
    inbuf: Vec<u8>,
    state: Arc<Mutex<State>>,
    index: usize,
    /// The name given with USER, waiting for PASS.
    user: Option<String>,
    /// The maildrop as of login (TRANSACTION state); None before.
    snapshot: Option<Vec<Msg>>,
    deleted: Vec<bool>,
    /// Lines at the front of `inbuf` that arrived before the last reply was
    /// written.
    ahead: usize,
    /// `Builder::login_handoff`, `Builder::strict_no_pipelining`.
    handoff: bool,
    strict: bool,
    /// A strict server refused a SASL answer sent before its challenge.
    refused_ahead: bool,
}

impl<S: AsyncRead + AsyncWrite + Unpin> Conn<S> {
    fn state(&self) -> MutexGuard<'_, State> {
        lock(&self.state)
    }

    async fn run(&mut self) -> std::io::Result<()> {
        let (delay, stamp) = {
            let s = self.state();
            (s.greeting_delay, s.apop_stamp.clone())
        };
        (self.handoff, self.strict) = {
            let s = self.state();
            (s.handoff, s.strict)
        };
        let greeting = match stamp {
            Some(stamp) => Reply::ok(&format!("popsync fault server ready {stamp}")),
            None => Reply::ok("popsync fault server ready"),
        };
        if let Some(d) = delay {
            if !self.hold(d).await {
                return Ok(());
            }
            self.discard();
        }
        // Strict: a command sent before the greeting is caught too.
        self.before_reply(false).await;
        let fault = self.state().fire(On::Greeting);
        if matches!(fault, Some(Fault::Err(_))) {
            // A server that refuses at the greeting hangs up.
            self.send_with(greeting, fault).await?;
            return Ok(());
        }
        if !self.send_with(greeting, fault).await? {
            return Ok(());
        }
        self.note_ahead();
        while let Some((line, ahead)) = self.next_line().await? {
            if self.strict && ahead {
                self.before_reply(false).await;
                self.write(format!("-ERR {PIPELINED_ERR}\r\n").as_bytes())
                    .await?;
                self.note_ahead();
                continue;
            }
            let (on, reply) = self.answer(&line).await?;
            let state_changing = matches!(
                on,
                Some(On::User | On::Pass | On::Apop | On::Auth | On::Utf8)
            );
            self.before_reply(state_changing).await;
            let fault = on.and_then(|on| self.state().fire(on));
            if !self.send_with(reply, fault).await? {
                return Ok(());
            }
            self.note_ahead();
        }
        Ok(())
    }

    /// Read the next line and record it; true with it if it had arrived
    /// before the last reply was written (pipelined).
    async fn next_line(&mut self) -> std::io::Result<Option<(String, bool)>> {
        let Some(line) = self.read_line().await? else {
            return Ok(None);
        };
        let ahead = self.ahead > 0;
        self.ahead = self.ahead.saturating_sub(1);
        let logged_in = self.snapshot.is_some();
        let mut state = lock(&self.state);
        state.sessions[self.index].push(line.clone());
        if ahead {
            state.ahead[self.index].push(line.clone());
        }
        state.transcripts[self.index].push(Line {
            text: line.clone(),
            ahead,
            discarded: false,
            logged_in,
        });
        Ok(Some((line, ahead)))
    }

    /// About to reply (to a state-changing command if `state_changing`):
    /// a strict server, and a hand-off server before a state-changing
    /// reply, first read for `GRACE` so that pipelined lines are in; the
    /// hand-off server then throws them away. A client that left meanwhile
    /// still gets the reply written (and its effect applied), as with
    /// `Fault::Stall`.
    async fn before_reply(&mut self, state_changing: bool) {
        let handoff = self.handoff && state_changing;
        if self.strict || handoff {
            let _ = self.hold(GRACE).await;
        }
        if handoff {
            self.discard();
        }
    }

    /// Throw away what was received and not yet answered, recording it in
    /// `sessions`, `ahead` and `discarded` (a last partial line included).
    fn discard(&mut self) {
        if self.inbuf.is_empty() {
            return;
        }
        let bytes = std::mem::take(&mut self.inbuf);
        self.ahead = 0;
        let lines: Vec<String> = bytes
            .split_inclusive(|&b| b == b'\n')
            .map(|l| {
                String::from_utf8_lossy(l)
                    .trim_end_matches(['\r', '\n'])
                    .to_owned()
            })
            .collect();
        let logged_in = self.snapshot.is_some();
        let mut state = lock(&self.state);
        state.sessions[self.index].extend(lines.iter().cloned());
        state.ahead[self.index].extend(lines.iter().cloned());
        state.transcripts[self.index].extend(lines.iter().map(|text| Line {
            text: text.clone(),
            ahead: true,
            discarded: true,
            logged_in,
        }));
        state.discarded[self.index].extend(lines);
    }

    /// The final reply of an AUTH exchange that `challenge` ended: the
    /// client left, or (strict) answered before the challenge.
    fn no_answer(&self) -> Reply {
        if self.refused_ahead {
            Reply::err(PIPELINED_ERR)
        } else {
            Reply::err("client left")
        }
    }

    /// A reply is written: the whole lines the server has already read
    /// were sent without waiting for it.
    fn note_ahead(&mut self) {
        self.ahead = self.inbuf.iter().filter(|&&b| b == b'\n').count();
    }

    /// Read one command line (without CRLF); None when the client left.
    async fn read_line(&mut self) -> std::io::Result<Option<String>> {
        loop {
            if let Some(lf) = self.inbuf.iter().position(|&b| b == b'\n') {
                let mut line: Vec<u8> = self.inbuf.drain(..=lf).collect();
                line.pop();
                if line.last() == Some(&b'\r') {
                    line.pop();
                }
                return Ok(Some(String::from_utf8_lossy(&line).into_owned()));
            }
            if self.inbuf.len() > MAX_COMMAND {
                return Ok(None);
            }
            let mut chunk = [0u8; 4096];
            let n = self.stream.read(&mut chunk).await?;
            if n == 0 {
                return Ok(None);
            }
            self.inbuf.extend_from_slice(&chunk[..n]);
        }
    }

    /// Wait `d` while noticing the client leave (false then). What the
    /// client sends meanwhile (pipelined commands) is kept for later.
    async fn hold(&mut self, d: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + d;
        let mut chunk = [0u8; 4096];
        loop {
            match tokio::time::timeout_at(deadline, self.stream.read(&mut chunk)).await {
                Err(_) => return true,
                Ok(Ok(0)) | Ok(Err(_)) => return false,
                Ok(Ok(n)) => self.inbuf.extend_from_slice(&chunk[..n]),
            }
        }
    }

    async fn write(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        self.stream.write_all(bytes).await?;
        self.stream.flush().await
    }

    /// Send `reply`, bent by `fault`, and apply its effect. Ok(false): the
    /// connection is over (QUIT, or a fault that closes it).
    async fn send_with(&mut self, reply: Reply, fault: Option<Fault>) -> std::io::Result<bool> {
        let Reply {
            bytes,
            multiline,
            effect,
        } = reply;
        let keep_effect = !matches!(fault, Some(Fault::Err(_) | Fault::Raw(_)));
        let quit = matches!(effect, Effect::Quit);
        if keep_effect {
            self.apply(effect);
        }
        match fault {
            None => self.write(&bytes).await?,
            Some(Fault::Err(text)) => self.write(format!("-ERR {text}\r\n").as_bytes()).await?,
            Some(Fault::Raw(raw)) => self.write(&raw).await?,
            Some(Fault::DropAfter(k)) => {
                self.write(&bytes[..k.min(bytes.len())]).await?;
                let _ = self.stream.shutdown().await;
                return Ok(false);
            }
            Some(Fault::Stall(d)) => {
                if !self.hold(d).await {
                    return Ok(false);
                }
                self.write(&bytes).await?;
            }
            Some(Fault::Trickle(d)) => {
                for b in &bytes {
                    tokio::time::sleep(d).await;
                    self.write(std::slice::from_ref(b)).await?;
                }
            }
            Some(Fault::NoTerminator { close }) => {
                let cut = if multiline {
                    bytes.len().saturating_sub(3)
                } else {
                    bytes.len()
                };
                self.write(&bytes[..cut]).await?;
                if !close {
                    self.hold(MAX_HOLD).await;
                }
                let _ = self.stream.shutdown().await;
                return Ok(false);
            }
            Some(Fault::Endless) => {
                self.write(b"+OK here it comes\r\n").await?;
                let mut n: u64 = 0;
                // Ends when the client hangs up (the write fails) or the
                // server stops; 4 GiB is a backstop, not a limit under test.
                while n < 1 << 32 {
                    let mut chunk = Vec::with_capacity(64 * 1024);
                    while chunk.len() < 60 * 1024 {
                        n += 1;
                        chunk.extend_from_slice(format!("{n} endless-{n}\r\n").as_bytes());
                    }
                    self.write(&chunk).await?;
                }
                return Ok(false);
            }
            Some(Fault::EndlessEvery(pause)) => {
                self.write(b"+OK here it comes\r\n").await?;
                let mut n: u64 = 0;
                // Ends when the client hangs up (the write fails) or the
                // server stops; the count is a backstop.
                while n < 1 << 20 {
                    n += 1;
                    tokio::time::sleep(pause).await;
                    self.write(format!("{n} endless-{n}\r\n").as_bytes())
                        .await?;
                }
                return Ok(false);
            }
            Some(Fault::LongLine(len)) => {
                let mut out = b"+OK long line follows".to_vec();
                if multiline {
                    out.extend_from_slice(b"\r\n1 ");
                } else {
                    out.push(b' ');
                }
                out.resize(out.len() + len, b'x');
                out.extend_from_slice(b"\r\n");
                if multiline {
                    out.extend_from_slice(b".\r\n");
                }
                self.write(&out).await?;
            }
        }
        if quit {
            let _ = self.stream.shutdown().await;
            return Ok(false);
        }
        Ok(true)
    }

    fn apply(&mut self, effect: Effect) {
        match effect {
            Effect::None => {}
            Effect::User(name) => self.user = Some(name),
            Effect::Login => {
                let mailbox = self.state().mailbox.clone();
                self.deleted = vec![false; mailbox.len()];
                self.snapshot = Some(mailbox);
            }
            Effect::Dele(i) => self.deleted[i] = true,
            Effect::Rset => self.deleted.iter_mut().for_each(|d| *d = false),
            Effect::Quit => {
                let Some(snapshot) = &self.snapshot else {
                    return;
                };
                let gone: Vec<u64> = snapshot
                    .iter()
                    .zip(&self.deleted)
                    .filter(|(_, d)| **d)
                    .map(|(m, _)| m.id)
                    .collect();
                self.state().mailbox.retain(|m| !gone.contains(&m.id));
            }
        }
    }

    /// The honest reply to `line`, and what a fault for it is attached to.
    async fn answer(&mut self, line: &str) -> std::io::Result<(Option<On>, Reply)> {
        let mut words = line.split_whitespace();
        let verb = words.next().unwrap_or_default().to_ascii_uppercase();
        let args: Vec<&str> = words.collect();
        let arg_num = |i: usize| args.get(i).and_then(|a| a.parse::<u32>().ok());
        let logged_in = self.snapshot.is_some();
        let reply = match verb.as_str() {
            "CAPA" => {
                let capa = {
                    let s = self.state();
                    match &s.capa_after_login {
                        Some(after) if logged_in => after.clone(),
                        _ => s.capa.clone(),
                    }
                };
                if capa.is_empty() {
                    return Ok((Some(On::Capa), Reply::err("unknown command")));
                }
                let body: String = capa.iter().map(|c| format!("{c}\n")).collect();
                (
                    On::Capa,
                    Reply::multi("Capability list follows", body.as_bytes()),
                )
            }
            "QUIT" => (On::Quit, Reply::single("+OK bye".into(), Effect::Quit)),
            "NOOP" if logged_in => (On::Noop, Reply::ok("")),
            // RFC 6856: only in AUTHORIZATION state.
            "UTF8" if !logged_in => (On::Utf8, Reply::ok("UTF8 enabled")),
            "APOP" if !logged_in && self.state().apop_stamp.is_some() => {
                let ok = {
                    let s = self.state();
                    let stamp = s.apop_stamp.as_deref().unwrap_or_default();
                    args.len() == 2
                        && args[0] == s.user
                        && args[1].eq_ignore_ascii_case(&md5_hex(
                            format!("{stamp}{}", s.password).as_bytes(),
                        ))
                };
                (On::Apop, self.login_reply(ok))
            }
            "USER" if !logged_in => match args.first() {
                Some(name) => (
                    On::User,
                    Reply::single("+OK send PASS".into(), Effect::User((*name).to_owned())),
                ),
                None => (On::User, Reply::err("USER needs a name")),
            },
            "PASS" if !logged_in => {
                let pass = line.get(5..).unwrap_or_default();
                let ok = {
                    let s = self.state();
                    self.user.as_deref() == Some(s.user.as_str()) && pass == s.password
                };
                (On::Pass, self.login_reply(ok))
            }
            "AUTH" if !logged_in => (On::Auth, self.auth(&args).await?),
            _ if !logged_in => return Ok((None, Reply::err("log in first"))),
            "STAT" => {
                let (n, size) = self
                    .visible()
                    .fold((0, 0), |(n, s), (_, m)| (n + 1, s + wire_size(&m.body)));
                (On::Stat, Reply::ok(&format!("{n} {size}")))
            }
            "LIST" | "UIDL" => {
                let uidl = verb == "UIDL";
                let on = if uidl { On::Uidl } else { On::List };
                let field = |m: &Msg| {
                    if uidl {
                        m.uidl.clone()
                    } else {
                        m.list_size
                            .unwrap_or_else(|| wire_size(&m.body))
                            .to_string()
                    }
                };
                match args.first() {
                    None => {
                        let body: String = self
                            .visible()
                            .map(|(n, m)| format!("{n} {}\n", field(m)))
                            .collect();
                        (on, Reply::multi("listing follows", body.as_bytes()))
                    }
                    Some(_) => match arg_num(0).and_then(|n| self.message(n)) {
                        Some(m) => (on, Reply::ok(&format!("{} {}", args[0], field(m)))),
                        None => (on, Reply::err("no such message")),
                    },
                }
            }
            "RETR" => match arg_num(0) {
                Some(n) => match self.message(n) {
                    Some(m) => {
                        let octets = wire_size(&m.body);
                        (
                            On::Retr(n),
                            Reply::multi(&format!("{octets} octets"), &m.body),
                        )
                    }
                    None => (On::Retr(n), Reply::err("no such message")),
                },
                None => return Ok((None, Reply::err("RETR needs a message number"))),
            },
            "TOP" => match (arg_num(0).and_then(|n| self.message(n)), arg_num(1)) {
                (Some(m), Some(lines)) => {
                    let top = top_of(&m.body, lines as usize);
                    (On::Top, Reply::multi("top of message follows", &top))
                }
                _ => (On::Top, Reply::err("no such message")),
            },
            "DELE" => match arg_num(0).filter(|&n| self.message(n).is_some()) {
                Some(n) => (
                    On::Dele,
                    Reply::single(
                        format!("+OK message {n} deleted"),
                        Effect::Dele(n as usize - 1),
                    ),
                ),
                None => (On::Dele, Reply::err("no such message")),
            },
            "RSET" => (On::Rset, Reply::single("+OK".into(), Effect::Rset)),
            _ => return Ok((None, Reply::err("unknown command"))),
        };
        Ok((Some(reply.0), reply.1))
    }

    fn login_reply(&self, ok: bool) -> Reply {
        if ok {
            Reply::single("+OK logged in".into(), Effect::Login)
        } else {
            Reply::err("[AUTH] invalid user name or password")
        }
    }

    /// AUTH MECH [INITIAL-RESPONSE]: PLAIN, LOGIN, XOAUTH2, OAUTHBEARER,
    /// SCRAM-SHA-1, SCRAM-SHA-256. Every line the client sends during the
    /// exchange is recorded like a command. "*" cancels (RFC 5034).
    async fn auth(&mut self, args: &[&str]) -> std::io::Result<Reply> {
        let mechanism = args.first().map(|m| m.to_ascii_uppercase());
        let Some(mechanism) = mechanism else {
            return Ok(Reply::err("AUTH needs a mechanism"));
        };
        if !matches!(
            mechanism.as_str(),
            "PLAIN" | "LOGIN" | "XOAUTH2" | "OAUTHBEARER" | "SCRAM-SHA-1" | "SCRAM-SHA-256"
        ) {
            return Ok(Reply::err("unsupported mechanism"));
        }
        if mechanism == "LOGIN" {
            return self.auth_login(args.get(1).copied()).await;
        }
        // The initial response: on the AUTH line ("=" is an empty one), or
        // the answer to an empty challenge.
        let initial = match args.get(1) {
            Some(p) => (*p).to_owned(),
            None => match self.challenge(b"").await? {
                Some(line) => line,
                None => return Ok(self.no_answer()),
            },
        };
        if initial == "*" {
            return Ok(Reply::err("AUTH cancelled"));
        }
        let initial = if initial == "=" {
            Vec::new()
        } else {
            match b64_decode(&initial) {
                Some(d) => d,
                None => return Ok(Reply::err("initial response is not base64")),
            }
        };
        match mechanism.as_str() {
            "PLAIN" => {
                let parts: Vec<&[u8]> = initial.split(|&b| b == 0).collect();
                let ok = {
                    let s = self.state();
                    parts.len() == 3
                        && parts[1] == s.user.as_bytes()
                        && parts[2] == s.password.as_bytes()
                };
                Ok(self.login_reply(ok))
            }
            "XOAUTH2" | "OAUTHBEARER" => self.auth_oauth(&mechanism, &initial).await,
            _ => self.auth_scram(&mechanism, &initial).await,
        }
    }

    /// AUTH LOGIN: "Username:" (unless the name came on the AUTH line), then
    /// "Password:", each answered in base64.
    async fn auth_login(&mut self, initial: Option<&str>) -> std::io::Result<Reply> {
        let user = match initial {
            Some(line) => line.to_owned(),
            None => match self.challenge(b"Username:").await? {
                Some(line) => line,
                None => return Ok(self.no_answer()),
            },
        };
        if user == "*" {
            return Ok(Reply::err("AUTH cancelled"));
        }
        let Some(password) = self.challenge(b"Password:").await? else {
            return Ok(self.no_answer());
        };
        if password == "*" {
            return Ok(Reply::err("AUTH cancelled"));
        }
        let ok = {
            let s = self.state();
            b64_decode(&user).as_deref() == Some(s.user.as_bytes())
                && b64_decode(&password).as_deref() == Some(s.password.as_bytes())
        };
        Ok(self.login_reply(ok))
    }

    /// Send "+ BASE64(data)" (just "+ " when empty) and read the answer
    /// line, recorded; None when the client left.
    /// A hand-off server throws away what came before the challenge; a
    /// strict one ends the exchange (None, see `no_answer`) if the answer
    /// was sent before the challenge.
    async fn challenge(&mut self, data: &[u8]) -> std::io::Result<Option<String>> {
        use base64::Engine as _;
        let text = base64::engine::general_purpose::STANDARD.encode(data);
        self.before_reply(true).await;
        self.write(format!("+ {text}\r\n").as_bytes()).await?;
        self.note_ahead();
        let Some((line, ahead)) = self.next_line().await? else {
            return Ok(None);
        };
        if self.strict && ahead {
            self.refused_ahead = true;
            return Ok(None);
        }
        Ok(Some(line))
    }

    /// XOAUTH2 (`user=U^Aauth=Bearer T^A^A`) and OAUTHBEARER (RFC 7628,
    /// `n,a=U,^Aauth=Bearer T^A^A`). A wrong user or token gets the error
    /// challenge (the JSON status), then, whatever the answer, -ERR.
    async fn auth_oauth(&mut self, mechanism: &str, initial: &[u8]) -> std::io::Result<Reply> {
        let text = String::from_utf8_lossy(initial).into_owned();
        let mut fields = text.split('\x01');
        let first = fields.next().unwrap_or_default();
        let user = if mechanism == "XOAUTH2" {
            first.strip_prefix("user=").map(str::to_owned)
        } else {
            // gs2-header "n,a=USER," (the authzid, with "=2C" and "=3D").
            first
                .split(',')
                .find_map(|f| f.strip_prefix("a="))
                .map(|u| u.replace("=2C", ",").replace("=3D", "="))
        };
        let token = fields.find_map(|f| {
            let (key, value) = f.split_once('=')?;
            if !key.eq_ignore_ascii_case("auth") {
                return None;
            }
            let (scheme, token) = value.split_once(' ')?;
            scheme
                .eq_ignore_ascii_case("Bearer")
                .then(|| token.to_owned())
        });
        let (ok, json) = {
            let s = self.state();
            let ok = user.as_deref() == Some(s.user.as_str())
                && token.as_deref() == Some(s.password.as_str())
                && text.ends_with("\x01\x01");
            (ok, s.oauth_error.clone())
        };
        if ok {
            return Ok(self.login_reply(true));
        }
        // RFC 7628 3.2.2 / Google's XOAUTH2: the status as a challenge; the
        // client answers (0x01, or an empty line), then the failure.
        if self.challenge(json.as_bytes()).await?.is_none() {
            return Ok(self.no_answer());
        }
        Ok(Reply::err("[AUTH] invalid token"))
    }

    /// SCRAM-SHA-1 / SCRAM-SHA-256 (RFC 5802) without channel binding: the
    /// client's proof is checked; the server signature is sent as a final
    /// challenge, and the login completes when the client answers it.
    async fn auth_scram(&mut self, mechanism: &str, initial: &[u8]) -> std::io::Result<Reply> {
        use base64::Engine as _;
        let b64 = base64::engine::general_purpose::STANDARD;
        let sha1 = mechanism == "SCRAM-SHA-1";
        let client_first = String::from_utf8_lossy(initial).into_owned();
        // gs2-header "n,," or "y,," then client-first-bare "n=USER,r=NONCE".
        let Some(bare) = client_first
            .strip_prefix("n,,")
            .or_else(|| client_first.strip_prefix("y,,"))
        else {
            return Ok(Reply::err("SCRAM: bad gs2 header"));
        };
        let bare = bare.to_owned();
        let (Some(user), Some(client_nonce)) = (scram_attr(&bare, 'n'), scram_attr(&bare, 'r'))
        else {
            return Ok(Reply::err("SCRAM: bad client-first message"));
        };
        let user = user.replace("=2C", ",").replace("=3D", "=");
        let (known_user, password, bad_signature) = {
            let s = self.state();
            (s.user.clone(), s.password.clone(), s.scram_bad_signature)
        };
        let salt = b"popsync-fault-salt";
        let iterations = 4096u32;
        let nonce = format!("{client_nonce}fAuLtSeRvErNoNcE");
        let server_first = format!("r={nonce},s={},i={iterations}", b64.encode(salt));
        let Some(answer) = self.challenge(server_first.as_bytes()).await? else {
            return Ok(self.no_answer());
        };
        if answer == "*" {
            return Ok(Reply::err("AUTH cancelled"));
        }
        let Some(client_final) = b64_decode(&answer).and_then(|d| String::from_utf8(d).ok()) else {
            return Ok(Reply::err("SCRAM: client-final is not base64"));
        };
        let Some((without_proof, proof)) = client_final.rsplit_once(",p=") else {
            return Ok(Reply::err("SCRAM: no proof"));
        };
        if scram_attr(without_proof, 'r') != Some(nonce.as_str()) {
            return Ok(Reply::err("SCRAM: wrong nonce"));
        }
        let (pbkdf, hmac_alg, digest_alg, len) = if sha1 {
            (
                ring::pbkdf2::PBKDF2_HMAC_SHA1,
                ring::hmac::HMAC_SHA1_FOR_LEGACY_USE_ONLY,
                &ring::digest::SHA1_FOR_LEGACY_USE_ONLY,
                20,
            )
        } else {
            (
                ring::pbkdf2::PBKDF2_HMAC_SHA256,
                ring::hmac::HMAC_SHA256,
                &ring::digest::SHA256,
                32,
            )
        };
        let mut salted = vec![0u8; len];
        ring::pbkdf2::derive(
            pbkdf,
            std::num::NonZeroU32::new(iterations).expect("non-zero"),
            salt,
            password.as_bytes(),
            &mut salted,
        );
        let hmac = |key: &[u8], data: &[u8]| -> Vec<u8> {
            ring::hmac::sign(&ring::hmac::Key::new(hmac_alg, key), data)
                .as_ref()
                .to_vec()
        };
        let auth_message = format!("{bare},{server_first},{without_proof}");
        let client_key = hmac(&salted, b"Client Key");
        let stored_key = ring::digest::digest(digest_alg, &client_key);
        let client_signature = hmac(stored_key.as_ref(), auth_message.as_bytes());
        let expected: Vec<u8> = client_key
            .iter()
            .zip(&client_signature)
            .map(|(a, b)| a ^ b)
            .collect();
        if user != known_user || b64_decode(proof) != Some(expected) {
            return Ok(self.login_reply(false));
        }
        let mut signature = hmac(&hmac(&salted, b"Server Key"), auth_message.as_bytes());
        if bad_signature {
            signature[0] ^= 0xff;
        }
        let server_final = format!("v={}", b64.encode(&signature));
        match self.challenge(server_final.as_bytes()).await? {
            None => Ok(self.no_answer()),
            Some(line) if line == "*" => Ok(Reply::err("AUTH cancelled")),
            Some(_) => Ok(self.login_reply(true)),
        }
    }

    /// Messages not marked deleted, with their numbers.
    fn visible(&self) -> impl Iterator<Item = (usize, &Msg)> {
        self.snapshot
            .iter()
            .flatten()
            .enumerate()
            .filter(|(i, _)| !self.deleted[*i])
            .map(|(i, m)| (i + 1, m))
    }

    /// Message `n` (1-based) unless deleted.
    fn message(&self, n: u32) -> Option<&Msg> {
        let i = (n as usize).checked_sub(1)?;
        let m = self.snapshot.as_ref()?.get(i)?;
        (!self.deleted[i]).then_some(m)
    }
}

/// MD5 in lower-case hex (APOP).
fn md5_hex(data: &[u8]) -> String {
    use md5::Digest as _;
    md5::Md5::digest(data)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Base64 (standard alphabet, padded) to bytes; None if it is not.
fn b64_decode(text: &str) -> Option<Vec<u8>> {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD
        .decode(text.trim())
        .ok()
}

/// The value of `attr=` in a SCRAM message ("a=1,b=2").
fn scram_attr(text: &str, attr: char) -> Option<&str> {
    text.split(',').find_map(|part| {
        let rest = part.strip_prefix(attr)?;
        rest.strip_prefix('=')
    })
}

/// The header, the blank line and the first `lines` lines of the body.
fn top_of(body: &[u8], lines: usize) -> Vec<u8> {
    let text = body.split_inclusive(|&b| b == b'\n');
    let mut out = Vec::new();
    let mut in_body = false;
    let mut taken = 0;
    for line in text {
        if in_body {
            if taken == lines {
                break;
            }
            taken += 1;
        } else if line == b"\n" {
            in_body = true;
        }
        out.extend_from_slice(line);
    }
    out
}

/// The config of one account `name` on `srv` over plain TCP (user alice,
/// password secret, no `Received:` header): its state in `dir/state`, its
/// Maildir at `maildir`, a `timeout` of `timeout_secs`, and `extra` account
/// lines (retention, auth, ...).
pub fn plain_account_config(
    dir: &Path,
    name: &str,
    srv: &FaultServer,
    maildir: &Path,
    timeout_secs: u64,
    extra: &str,
) -> String {
    account_config(dir, name, srv, maildir, timeout_secs, "secret", extra)
}

/// `plain_account_config` with another password (for XOAUTH2 and
/// OAUTHBEARER: the token).
pub fn account_config(
    dir: &Path,
    name: &str,
    srv: &FaultServer,
    maildir: &Path,
    timeout_secs: u64,
    password: &str,
    extra: &str,
) -> String {
    let quote = |p: &Path| {
        let s = p.to_string_lossy();
        format!("\"{}\"", s.replace('\\', "\\\\").replace('"', "\\\""))
    };
    format!(
        "[defaults]\nstate_dir = {state}\ntimeout = {timeout_secs}\n\n\
         [accounts.{name}]\nhost = \"127.0.0.1\"\nport = {port}\ntls = \"none\"\n\
         allow_plaintext = true\nuser = \"alice\"\npassword = {password}\n\
         deliver = {{ maildir = {maildir} }}\nreceived_header = false\n{extra}\n",
        state = quote(&dir.join("state")),
        port = srv.port(),
        password = quote(Path::new(password)),
        maildir = quote(maildir),
    )
}

/// The account `TestEnv::fault_config` writes.
pub const ACCOUNT: &str = "test";

impl crate::common::TestEnv {
    /// The config of one account `test` on `srv` over plain TCP (user alice,
    /// password secret, no `Received:` header) delivering into
    /// `self.maildir("test")`, its state in `self.state_dir()`, a `timeout`
    /// of `timeout_secs`, and `extra` account lines.
    pub fn fault_config(&self, srv: &FaultServer, timeout_secs: u64, extra: &str) -> String {
        plain_account_config(
            self.path(),
            ACCOUNT,
            srv,
            &self.maildir(ACCOUNT),
            timeout_secs,
            extra,
        )
    }

    /// Writes `fault_config` and runs `popsync ARGS`, with `POPSYNC_NOW`
    /// set to `now` if given.
    pub fn run_fault(
        &self,
        srv: &FaultServer,
        timeout_secs: u64,
        extra: &str,
        args: &[&str],
        now: Option<&str>,
    ) -> crate::common::Output {
        let env: Vec<(&str, &str)> = now.map(|t| ("POPSYNC_NOW", t)).into_iter().collect();
        self.run_config_with_env(&self.fault_config(srv, timeout_secs, extra), args, &env)
    }
}
