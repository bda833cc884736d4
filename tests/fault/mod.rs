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

mod conn;
mod sasl;
mod tls;

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread;
use std::time::{Duration, Instant};

use crate::common::{Output, TestEnv, maildir_messages, maildir_tmp_files};
use conn::accept_loop;
/// The CA and certificate of a TLS test server; `tests/oauth/` serves
/// HTTPS with it too.
pub(crate) use tls::TestTls;

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
    /// Decides which bearer tokens XOAUTH2 and OAUTHBEARER accept, instead
    /// of comparing with `password` (`Builder::bearer`).
    bearer: Option<Bearer>,
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

/// Which bearer tokens the server accepts (`Builder::bearer`): asked at
/// each XOAUTH2 / OAUTHBEARER login, so the answer may change between runs.
pub type BearerCheck = Arc<dyn Fn(&str) -> bool + Send + Sync>;

/// A `BearerCheck` in `State`, which is `Debug`.
struct Bearer(BearerCheck);

impl std::fmt::Debug for Bearer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Bearer(..)")
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
    bearer: Option<BearerCheck>,
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

    /// XOAUTH2 and OAUTHBEARER accept the tokens `check` accepts (for
    /// the user of `credentials`), e.g. only the current access token of
    /// an `oauth::OAuthServer`, rather than the password.
    pub fn bearer(mut self, check: BearerCheck) -> Self {
        self.bearer = Some(check);
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
            bearer: self.bearer.map(Bearer),
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
            bearer: None,
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
    /// - after login, the three commands that follow the CAPA after login
    ///   may go out with it when the CAPA before login listed PIPELINING
    ///   (RFC 2449 section 6.6: announced in both states, no difference);
    /// - any other line after login may be sent ahead of a reply only if
    ///   this server's CAPA after login lists PIPELINING and the client
    ///   asked CAPA after login and had its reply before the line it sent
    ///   ahead of the previous reply;
    /// - nothing follows QUIT.
    pub fn pipelining_breaches(&self) -> Vec<String> {
        self.settle();
        let state = self.state();
        let lists = |capa: &[String]| capa.iter().any(|c| c.eq_ignore_ascii_case("PIPELINING"));
        let offered_before = lists(&state.capa);
        let offered = lists(state.capa_after_login.as_ref().unwrap_or(&state.capa));
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
                } else if capa_after_login.is_some_and(|c| offered_before && n > c && n <= c + 3) {
                    // Sent with the CAPA after login, on the word of the one before.
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

fn lock(state: &Mutex<State>) -> MutexGuard<'_, State> {
    state.lock().unwrap_or_else(|e| e.into_inner())
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

// ---------------------------------------------------------------------------
// Runs of `fetch` against a fault server, and what they left
// ---------------------------------------------------------------------------

/// A test message: headers, a body with a line that needs dot-stuffing and a
/// `From ` line, padded with text to about `size` octets; LF line ends.
pub fn message(i: usize, size: usize) -> Vec<u8> {
    let mut m = format!(
        "From: sender{i}@example.org\nTo: alice@example.org\nSubject: message {i}\n\
         Message-ID: <{i}@fault.test>\n\nHello {i}.\n.a line starting with a dot\n\
         From the start of a line\n..\n"
    )
    .into_bytes();
    let mut n = 0;
    while m.len() < size {
        n += 1;
        m.extend_from_slice(format!("filler line {n} of message {i}\n").as_bytes());
    }
    m
}

/// `n` test messages of growing size.
pub fn messages(n: usize) -> Vec<Vec<u8>> {
    (1..=n).map(|i| message(i, 300 + 40 * i)).collect()
}

/// The timeout of the account `fetch` runs: short, so stalls end soon.
pub const FETCH_TIMEOUT_SECS: u64 = 2;

/// `fetch test ARGS` against `srv` with `extra` account lines
/// (`TestEnv::fault_config`).
pub fn fetch(env: &TestEnv, srv: &FaultServer, extra: &str, args: &[&str]) -> Output {
    fetch_at(env, srv, extra, args, None)
}

/// `fetch` with `POPSYNC_NOW` set to `now` if given.
pub fn fetch_at(
    env: &TestEnv,
    srv: &FaultServer,
    extra: &str,
    args: &[&str],
    now: Option<&str>,
) -> Output {
    let mut all = vec!["fetch", ACCOUNT];
    all.extend_from_slice(args);
    env.run_fault(srv, FETCH_TIMEOUT_SECS, extra, &all, now)
}

/// The account's Maildir.
pub fn maildir(env: &TestEnv) -> PathBuf {
    env.maildir(ACCOUNT)
}

/// The messages in new/ and cur/, sorted (so equal lists mean "each
/// exactly once").
pub fn delivered(env: &TestEnv) -> Vec<Vec<u8>> {
    maildir_messages(&maildir(env))
}

/// Files left in tmp/ (a partial delivery would be one).
pub fn tmp_files(env: &TestEnv) -> Vec<String> {
    maildir_tmp_files(&maildir(env))
}

/// Was `line` sent, exactly?
pub fn sent(commands: &[String], line: &str) -> bool {
    commands.iter().any(|c| c == line)
}

/// The commands of `verb` that were sent.
pub fn sent_verb(commands: &[String], verb: &str) -> Vec<String> {
    commands
        .iter()
        .filter(|c| c.split(' ').next() == Some(verb))
        .cloned()
        .collect()
}
