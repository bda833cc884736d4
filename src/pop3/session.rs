//! The async POP3 client over any `AsyncRead + AsyncWrite` stream.
//!
//! Protocol states are types: `Greeted` (AUTHORIZATION state) can only log in or
//! upgrade to TLS; only `Transaction` can RETR or DELE. The async code here only
//! moves bytes and applies timeouts; parsing is `codec`'s. Server replies are
//! matched to commands by position alone. Pipelining (several commands sent
//! before their replies are read) follows RFC 2449: only in `Transaction`,
//! and only when the CAPA asked after login lists PIPELINING; before login
//! every command waits for its reply.

use std::convert::Infallible;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
// tokio's clock, so that deadlines and the timers that enforce them agree.
use tokio::time::Instant;

use super::auth::{self, Mechanism};
use super::codec::{
    self, Capabilities, CodecError, Command, Decoded, MultilineDecoder, RespCode, Status,
    StatusLine,
};
use crate::exit::ExitCode;

/// Most bytes of a listing (UIDL, LIST, CAPA) kept in memory: bounds what a
/// hostile server can make us allocate. 64 MiB is about a million messages.
const MAX_LISTING: u64 = 64 << 20;

/// Most octets of a CAPA reply.
const MAX_CAPA: u64 = 64 << 10;

/// Octets a listing line may take per message: "4294967295 " plus a
/// 70-character UIDL (RFC 1939) and the line end, rounded up; LIST's lines
/// are shorter.
const LISTING_LINE: u64 = 128;

/// The slowest a multi-line reply may arrive, on top of the timeout: a
/// server that trickles (or never ends) a reply cannot hold the account's
/// lock for ever. 1 KiB/s is slower than any link mail travels over.
const MIN_RATE: u64 = 1024;

/// How far a message may run past the size LIST announced before the RETR
/// is stopped: LIST counts CRLF line ends, so the decoded message is
/// smaller; a server that sends more than twice as much (plus slack for
/// servers that rewrite a message) is broken or hostile.
fn retr_limit(listed: u64) -> u64 {
    listed.saturating_mul(2).saturating_add(1 << 20)
}

/// How a session failed. Every variant names the server and the command.
#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    #[error("{server}: connection lost during {command}: {source}")]
    Io {
        server: String,
        command: String,
        source: std::io::Error,
    },
    #[error("{server}: connection closed by the server during {command}")]
    Closed { server: String, command: String },
    #[error("{server}: no reply to {command} within {}s (timeout)", timeout.as_secs())]
    Timeout {
        server: String,
        command: String,
        timeout: Duration,
    },
    #[error("{server}: {command} failed: {}", describe_err(text, code))]
    Rejected {
        server: String,
        command: String,
        code: Option<RespCode>,
        text: String,
    },
    #[error(
        "{server}: authentication failed for user {user:?} ({mechanism}): {}",
        describe_err(text, code)
    )]
    AuthFailed {
        server: String,
        user: String,
        mechanism: String,
        code: Option<RespCode>,
        text: String,
    },
    #[error("{server}: protocol error in reply to {command}: {source}")]
    Malformed {
        server: String,
        command: String,
        source: CodecError,
    },
    #[error("{server}: {command}: {message}")]
    Protocol {
        server: String,
        command: String,
        message: String,
    },
    #[error("{server}: {message}")]
    NoUsableAuth { server: String, message: String },
    #[error("{server}: {source}")]
    Auth {
        server: String,
        source: auth::AuthError,
    },
    #[error("{server}: refusing to send {command}: {source}")]
    Unsafe {
        server: String,
        command: String,
        source: CodecError,
    },
    #[error(
        "{server}: the reply to {command} ran past {limit} octets ({why}); the server is broken or hostile, nothing of it was kept"
    )]
    TooLong {
        server: String,
        command: String,
        limit: u64,
        why: String,
    },
    #[error(
        "{server}: the reply to {command} was not complete after {}s (it arrives at less than {MIN_RATE} octets/s); try again later",
        allowed.as_secs()
    )]
    TooSlow {
        server: String,
        command: String,
        allowed: Duration,
    },
}

fn describe_err(text: &str, code: &Option<RespCode>) -> String {
    let code = match code {
        Some(RespCode::InUse) => {
            " [IN-USE: the mailbox is locked by another session; try again later]"
        }
        Some(RespCode::LoginDelay) => {
            " [LOGIN-DELAY: the server allows logins only every so often]"
        }
        Some(RespCode::SysTemp) => " [SYS/TEMP: a temporary server problem]",
        Some(RespCode::SysPerm) => " [SYS/PERM: a permanent server problem; contact the provider]",
        Some(RespCode::Auth) => " [AUTH: wrong credentials]",
        _ => "",
    };
    format!("server said {text:?}{code}")
}

impl SessionError {
    /// DESIGN.md exit code of this failure.
    pub fn exit_code(&self) -> ExitCode {
        match self {
            SessionError::Io { .. } => ExitCode::Unavailable,
            SessionError::Timeout { .. } | SessionError::TooSlow { .. } => ExitCode::TempFail,
            SessionError::TooLong { .. } => ExitCode::Protocol,
            SessionError::Closed { .. }
            | SessionError::Malformed { .. }
            | SessionError::Protocol { .. } => ExitCode::Protocol,
            SessionError::Rejected { code, .. } => match code {
                Some(c) if c.is_temporary() => ExitCode::TempFail,
                Some(RespCode::Auth) => ExitCode::NoPerm,
                _ => ExitCode::Protocol,
            },
            SessionError::AuthFailed { code, .. } => match code {
                Some(c) if c.is_temporary() => ExitCode::TempFail,
                Some(RespCode::SysPerm) => ExitCode::Protocol,
                _ => ExitCode::NoPerm,
            },
            SessionError::NoUsableAuth { .. } => ExitCode::NoPerm,
            SessionError::Auth { source, .. } => source.exit_code(),
            SessionError::Unsafe { .. } => ExitCode::Config,
        }
    }
}

/// Where `-vv` protocol lines go. Passwords never reach it: commands are
/// traced in `Command::redacted` form and server text is sanitised.
pub type Trace = Box<dyn Fn(&str) + Send + Sync>;

/// A byte stream to one server with a read buffer and per-read timeout.
pub struct Connection<S> {
    stream: S,
    buf: Vec<u8>,
    /// Start of unread bytes in `buf`.
    pos: usize,
    server: String,
    timeout: Duration,
    trace: Option<Trace>,
    read_size: usize,
    /// The shortest command round trip seen (see `note_rtt`).
    rtt: Option<Duration>,
}

/// A connection's settings without its stream, while TLS is being set up.
pub struct Settings {
    server: String,
    timeout: Duration,
    trace: Option<Trace>,
}

impl Settings {
    /// Continue over a new stream (the TLS one), with an empty read buffer.
    pub fn resume<T: AsyncRead + AsyncWrite + Unpin>(self, stream: T) -> Connection<T> {
        Connection::new(stream, self.server, self.timeout, self.trace)
    }
}

/// Reply to one command.
pub type Reply = StatusLine;

/// How reading a multi-line reply into a sink failed: in the session, or in
/// the sink (a delivery), whose error is handed back as it was.
#[derive(Debug)]
pub enum BodyError<E> {
    Session(SessionError),
    Sink(E),
}

impl<E> From<SessionError> for BodyError<E> {
    fn from(e: SessionError) -> Self {
        BodyError::Session(e)
    }
}

impl BodyError<Infallible> {
    /// A read whose sink cannot fail can only have failed in the session.
    pub fn into_session(self) -> SessionError {
        match self {
            BodyError::Session(e) => e,
            BodyError::Sink(never) => match never {},
        }
    }
}

/// What a multi-line reply may be: at most `max` decoded octets, complete
/// before `deadline`.
#[derive(Debug, Clone, Copy)]
pub struct Bound {
    max: u64,
    why: &'static str,
    started: Instant,
    deadline: Instant,
}

impl<S: AsyncRead + AsyncWrite + Unpin> Connection<S> {
    pub fn new(stream: S, server: String, timeout: Duration, trace: Option<Trace>) -> Self {
        Connection {
            stream,
            buf: Vec::with_capacity(64 * 1024),
            pos: 0,
            server,
            timeout,
            trace,
            read_size: 64 * 1024,
            rtt: None,
        }
    }

    /// The underlying stream (for TLS facts).
    pub fn stream(&self) -> &S {
        &self.stream
    }

    /// The shortest round trip measured on this connection: it sizes the
    /// pipelining window.
    pub fn rtt(&self) -> Option<Duration> {
        self.rtt
    }

    /// Record the time from sending a command, with nothing else in flight,
    /// to its first reply line.
    pub fn note_rtt(&mut self, sample: Duration) {
        self.rtt = Some(self.rtt.map_or(sample, |r| r.min(sample)));
    }

    /// The server as named in errors ("host:port").
    pub fn server(&self) -> &str {
        &self.server
    }

    /// Give back the stream, for the STLS upgrade. Bytes the server sent after
    /// its STLS reply and before the handshake would be injected plaintext:
    /// refuse rather than silently drop or use them.
    pub fn into_parts(self, command: &str) -> Result<(S, Settings), SessionError> {
        if self.pos < self.buf.len() {
            return Err(SessionError::Protocol {
                server: self.server,
                command: command.to_owned(),
                message: "the server sent data before the TLS handshake (possible injection attack); refusing to continue".into(),
            });
        }
        Ok((
            self.stream,
            Settings {
                server: self.server,
                timeout: self.timeout,
                trace: self.trace,
            },
        ))
    }

    fn trace(&self, line: impl FnOnce() -> String) {
        if let Some(t) = &self.trace {
            t(&line());
        }
    }

    /// Send one command (it is buffered by the caller's order, not flushed
    /// separately from the others when pipelining: see `send_many`).
    pub async fn send(&mut self, cmd: &Command) -> Result<(), SessionError> {
        self.send_many(std::slice::from_ref(cmd)).await
    }

    /// Send several commands in one write (pipelining, RFC 2449).
    pub async fn send_many(&mut self, cmds: &[Command]) -> Result<(), SessionError> {
        let mut wire = Vec::new();
        for cmd in cmds {
            let bytes = cmd.to_wire().map_err(|source| SessionError::Unsafe {
                server: self.server.clone(),
                command: cmd.name(),
                source,
            })?;
            self.trace(|| format!("C: {}", cmd.redacted()));
            wire.extend_from_slice(&bytes);
        }
        let name = cmds.first().map(|c| c.name()).unwrap_or_default();
        let write = async {
            self.stream.write_all(&wire).await?;
            self.stream.flush().await
        };
        match tokio::time::timeout(self.timeout, write).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(source)) => Err(SessionError::Io {
                server: self.server.clone(),
                command: name,
                source,
            }),
            Err(_) => Err(SessionError::Timeout {
                server: self.server.clone(),
                command: name,
                timeout: self.timeout,
            }),
        }
    }

    /// Close our side (TLS close_notify, then FIN), not waiting for the
    /// server's: used after a QUIT whose reply does not matter, so a failure
    /// here changes nothing.
    pub async fn close(&mut self) {
        let _ = tokio::time::timeout(self.timeout, self.stream.shutdown()).await;
    }

    /// After a QUIT answered +OK: read and drop whatever comes until the
    /// server closes the connection (RFC 1939: the server closes it after
    /// the UPDATE state), bounded by the timeout.
    pub async fn await_close(&mut self) {
        let mut scrap = [0u8; 512];
        let drained = async {
            while let Ok(n) = self.stream.read(&mut scrap).await {
                if n == 0 {
                    break;
                }
            }
        };
        let _ = tokio::time::timeout(self.timeout, drained).await;
        self.close().await;
    }

    /// A bound for a reply of at most `max` octets (`why` says where the
    /// number comes from): the timeout, plus the time `max` octets take at
    /// `MIN_RATE`.
    pub fn bound(&self, max: u64, why: &'static str) -> Bound {
        let started = Instant::now();
        let slack = Duration::from_secs(max / MIN_RATE);
        Bound {
            max,
            why,
            started,
            deadline: started + self.timeout.saturating_add(slack),
        }
    }

    /// Read more bytes into the buffer; an error when the server closed or
    /// nothing came within the timeout. A reply that is not done by
    /// `bound`'s deadline is `TooSlow`, however steadily its bytes trickle in.
    async fn fill_until(
        &mut self,
        command: &str,
        bound: Option<&Bound>,
    ) -> Result<(), SessionError> {
        let mut wait = self.timeout;
        if let Some(b) = bound {
            let left = b.deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(SessionError::TooSlow {
                    server: self.server.clone(),
                    command: command.to_owned(),
                    allowed: b.deadline - b.started,
                });
            }
            wait = wait.min(left);
        }
        if self.pos > 0 && self.pos == self.buf.len() {
            self.buf.clear();
            self.pos = 0;
        } else if self.pos > self.buf.capacity() / 2 {
            self.buf.drain(..self.pos);
            self.pos = 0;
        }
        let start = self.buf.len();
        self.buf.resize(start + self.read_size, 0);
        let read = tokio::time::timeout(wait, self.stream.read(&mut self.buf[start..])).await;
        let n = match read {
            Ok(Ok(n)) => n,
            Ok(Err(source)) => {
                self.buf.truncate(start);
                return Err(SessionError::Io {
                    server: self.server.clone(),
                    command: command.to_owned(),
                    source,
                });
            }
            Err(_) => {
                self.buf.truncate(start);
                if let Some(b) = bound.filter(|b| Instant::now() >= b.deadline) {
                    return Err(SessionError::TooSlow {
                        server: self.server.clone(),
                        command: command.to_owned(),
                        allowed: b.deadline - b.started,
                    });
                }
                return Err(SessionError::Timeout {
                    server: self.server.clone(),
                    command: command.to_owned(),
                    timeout: self.timeout,
                });
            }
        };
        self.buf.truncate(start + n);
        if n == 0 {
            return Err(SessionError::Closed {
                server: self.server.clone(),
                command: command.to_owned(),
            });
        }
        Ok(())
    }

    /// Read one status line.
    pub async fn read_status(&mut self, command: &str) -> Result<Reply, SessionError> {
        // A line that trickles in one octet per timeout would never end.
        let bound = self.bound(1024, "a status line");
        loop {
            let found = codec::split_line(&self.buf[self.pos..]).map_err(|source| {
                SessionError::Malformed {
                    server: self.server.clone(),
                    command: command.to_owned(),
                    source,
                }
            })?;
            if let Some((len, consumed)) = found {
                let line = &self.buf[self.pos..self.pos + len];
                let parsed = codec::parse_status(line);
                self.trace(|| {
                    // SASL challenges carry nonces, salts and proofs: redacted
                    // like the client's answers.
                    if line.first() == Some(&b'+') && !line.starts_with(b"+OK") {
                        "S: + <redacted>".to_owned()
                    } else {
                        format!("S: {}", crate::sanitize::sanitize(line, 200))
                    }
                });
                self.pos += consumed;
                return parsed.map_err(|source| SessionError::Malformed {
                    server: self.server.clone(),
                    command: command.to_owned(),
                    source,
                });
            }
            self.fill_until(command, Some(&bound)).await?;
        }
    }

    /// Read the body of a multi-line reply, handing decoded bytes (LF line
    /// ends) to `sink` as they arrive; no more than `bound` allows. Returns
    /// the decoded length.
    pub async fn read_body<F, E>(
        &mut self,
        command: &str,
        bound: Bound,
        mut sink: F,
    ) -> Result<u64, BodyError<E>>
    where
        F: FnMut(&[u8]) -> Result<(), E>,
    {
        let mut decoder = MultilineDecoder::new();
        let mut out = Vec::with_capacity(self.read_size + 16);
        let mut total = 0u64;
        loop {
            if self.pos < self.buf.len() {
                out.clear();
                let (consumed, state) = decoder.decode(&self.buf[self.pos..], &mut out);
                self.pos += consumed;
                if !out.is_empty() {
                    total = total.saturating_add(out.len() as u64);
                    if total > bound.max {
                        return Err(BodyError::Session(SessionError::TooLong {
                            server: self.server.clone(),
                            command: command.to_owned(),
                            limit: bound.max,
                            why: bound.why.to_owned(),
                        }));
                    }
                    sink(&out).map_err(BodyError::Sink)?;
                }
                if let Decoded::End = state {
                    self.trace(|| format!("S: <{total} octets> ."));
                    return Ok(total);
                }
            }
            self.fill_until(command, Some(&bound)).await?;
        }
    }

    /// Read a whole multi-line body of at most `max` octets (and never more
    /// than `MAX_LISTING`) into memory.
    pub async fn read_listing(
        &mut self,
        command: &str,
        max: u64,
        why: &'static str,
    ) -> Result<Vec<u8>, SessionError> {
        let (max, why) = if max > MAX_LISTING {
            (MAX_LISTING, "the most popsync reads of a listing")
        } else {
            (max, why)
        };
        let bound = self.bound(max, why);
        let mut body = Vec::new();
        self.read_body(command, bound, |chunk| {
            body.extend_from_slice(chunk);
            Ok::<(), Infallible>(())
        })
        .await
        .map_err(BodyError::into_session)?;
        Ok(body)
    }

    /// Send a command and read its status; `-ERR` becomes `Rejected`.
    pub async fn simple(&mut self, cmd: &Command) -> Result<Reply, SessionError> {
        self.send(cmd).await?;
        self.expect_ok(&cmd.name()).await
    }

    /// Read a status line and require +OK.
    pub async fn expect_ok(&mut self, command: &str) -> Result<Reply, SessionError> {
        let reply = self.read_status(command).await?;
        match reply.status {
            Status::Ok => Ok(reply),
            Status::Err => Err(SessionError::Rejected {
                server: self.server.clone(),
                command: command.to_owned(),
                code: reply.code,
                text: reply.text,
            }),
            Status::Continue => Err(SessionError::Protocol {
                server: self.server.clone(),
                command: command.to_owned(),
                message: "unexpected \"+\" continuation".into(),
            }),
        }
    }
}

/// A connection in the AUTHORIZATION state.
///
/// Every command here changes the state or may (USER, PASS, APOP, AUTH and
/// its continuation lines, STLS, UTF8), so each one waits for its reply
/// before anything else is sent (RFC 2449 allows pipelining only in the
/// TRANSACTION state). Servers that hand a logged-in connection to another
/// process (Courier) drop whatever was sent behind the login, and others
/// (Cyrus) refuse it, which would misalign every reply after it.
pub struct Greeted<S> {
    pub conn: Connection<S>,
    /// The greeting text; holds the APOP timestamp when the server offers APOP.
    pub greeting: String,
    pub capa: Capabilities,
    /// UTF8 (RFC 6856) was asked for on this connection.
    utf8_asked: bool,
}

impl<S: AsyncRead + AsyncWrite + Unpin> Greeted<S> {
    /// Read the server greeting, then ask its capabilities. Nothing is sent
    /// before the greeting has arrived: a server may discard input that
    /// comes before it.
    pub async fn start(mut conn: Connection<S>) -> Result<Greeted<S>, SessionError> {
        let reply = conn.expect_ok("greeting").await?;
        let mut g = Greeted::resume(conn, reply.text);
        g.refresh_capa().await?;
        Ok(g)
    }

    /// A greeted connection continued over a new stream (after STLS), its
    /// capabilities not yet asked.
    pub fn resume(conn: Connection<S>, greeting: String) -> Greeted<S> {
        Greeted {
            conn,
            greeting,
            capa: Capabilities::default(),
            utf8_asked: false,
        }
    }

    /// Ask CAPA again (after STLS and after login the answer can change).
    /// A server without CAPA (RFC 1939 only) has an empty capability list.
    pub async fn refresh_capa(&mut self) -> Result<(), SessionError> {
        self.capa = capa(&mut self.conn).await?;
        Ok(())
    }

    /// Send STLS and, on +OK, hand back the bare stream for the handshake.
    pub async fn stls(mut self) -> Result<(S, Settings), SessionError> {
        self.conn.simple(&Command::Stls).await?;
        self.conn.into_parts("STLS")
    }

    /// Log in with `mech` and enter the TRANSACTION state; a rejection is
    /// failed authentication (`probe --login` uses this; `fetch` tries
    /// mechanisms in turn with `authenticate`).
    pub async fn login(
        mut self,
        user: &str,
        password: &str,
        mech: Mechanism,
    ) -> Result<Transaction<S>, SessionError> {
        self.authenticate(user, password, mech).await?;
        self.into_transaction().await
    }

    /// Try one login mechanism. On a plain rejection the session stays in
    /// the AUTHORIZATION state, so another mechanism may be tried.
    pub async fn authenticate(
        &mut self,
        user: &str,
        password: &str,
        mech: Mechanism,
    ) -> Result<(), SessionError> {
        self.utf8_if_offered().await?;
        match mech {
            Mechanism::User => {
                self.conn.send(&Command::User(user.to_owned())).await?;
                self.auth_reply(user, "USER").await?;
                self.conn.send(&Command::Pass(password.to_owned())).await?;
                self.auth_reply(user, "USER/PASS").await?;
            }
            Mechanism::Apop => {
                let digest = auth::apop_digest(&self.greeting, password).map_err(|source| {
                    SessionError::Auth {
                        server: self.conn.server.clone(),
                        source,
                    }
                })?;
                self.conn
                    .send(&Command::Apop {
                        user: user.to_owned(),
                        digest,
                    })
                    .await?;
                self.auth_reply(user, "APOP").await?;
            }
            Mechanism::Sasl(kind) => self.sasl(user, password, kind).await?,
        }
        Ok(())
    }

    /// After a successful `authenticate`: the TRANSACTION state. CAPA is
    /// asked again, and its answer alone decides about pipelining: some
    /// servers (Gmail) announce PIPELINING, TOP, UIDL only after login, and
    /// what held before login need not hold after it.
    pub async fn into_transaction(self) -> Result<Transaction<S>, SessionError> {
        let mut conn = self.conn;
        let capa = capa(&mut conn).await?;
        Ok(Transaction {
            conn,
            capa,
            marked: false,
        })
    }

    /// RFC 6856: when the server offers UTF8, ask for it before logging in,
    /// so that it sends headers with raw UTF-8 as they are stored instead of
    /// rewriting them (Courier does). A refusal changes nothing: the session
    /// goes on as before. Asked once per connection.
    async fn utf8_if_offered(&mut self) -> Result<(), SessionError> {
        if self.utf8_asked || !self.capa.utf8() {
            return Ok(());
        }
        self.utf8_asked = true;
        self.conn.send(&Command::Utf8).await?;
        let reply = self.conn.read_status("UTF8").await?;
        if reply.status == Status::Continue {
            return Err(SessionError::Protocol {
                server: self.conn.server.clone(),
                command: "UTF8".into(),
                message: "unexpected \"+\" continuation".into(),
            });
        }
        Ok(())
    }

    async fn auth_reply(&mut self, user: &str, mechanism: &str) -> Result<Reply, SessionError> {
        let reply = self.conn.read_status(mechanism).await?;
        match reply.status {
            Status::Ok => Ok(reply),
            _ => Err(SessionError::AuthFailed {
                server: self.conn.server.clone(),
                user: user.to_owned(),
                mechanism: mechanism.to_owned(),
                code: reply.code,
                text: reply.text,
            }),
        }
    }

    async fn sasl(
        &mut self,
        user: &str,
        password: &str,
        kind: auth::Sasl,
    ) -> Result<(), SessionError> {
        let server = self.conn.server.clone();
        let wrap = |source| SessionError::Auth {
            server: server.clone(),
            source,
        };
        let mut client = auth::SaslClient::new(kind, user, password).map_err(&wrap)?;
        let name = kind.name();
        let initial = client.initial_response().map_err(&wrap)?;
        // RFC 5034: the whole command must fit in 255 octets, else send the
        // initial response after an empty challenge.
        let cmd = match initial {
            Some(ir) if 5 + name.len() + 1 + ir.len() + 2 <= 255 => Command::Auth {
                mechanism: name.to_owned(),
                initial_response: Some(ir),
            },
            Some(ir) => {
                client.defer_initial(ir);
                Command::Auth {
                    mechanism: name.to_owned(),
                    initial_response: None,
                }
            }
            None => Command::Auth {
                mechanism: name.to_owned(),
                initial_response: None,
            },
        };
        self.conn.send(&cmd).await?;
        let label = format!("AUTH {name}");
        loop {
            let reply = self.conn.read_status(&label).await?;
            match reply.status {
                Status::Ok => {
                    client.finish(&reply.text).map_err(&wrap)?;
                    return Ok(());
                }
                Status::Err => {
                    return Err(SessionError::AuthFailed {
                        server: self.conn.server.clone(),
                        user: user.to_owned(),
                        mechanism: label,
                        code: reply.code,
                        text: client.error_detail().unwrap_or(reply.text),
                    });
                }
                Status::Continue => {
                    let answer = client.step(&reply.text).map_err(&wrap)?;
                    self.conn.send(&Command::AuthResponse(answer)).await?;
                }
            }
        }
    }
}

async fn capa<S: AsyncRead + AsyncWrite + Unpin>(
    conn: &mut Connection<S>,
) -> Result<Capabilities, SessionError> {
    let asked = std::time::Instant::now();
    conn.send(&Command::Capa).await?;
    let reply = conn.read_status("CAPA").await?;
    conn.note_rtt(asked.elapsed());
    capa_listing(conn, reply).await
}

async fn capa_listing<S: AsyncRead + AsyncWrite + Unpin>(
    conn: &mut Connection<S>,
    reply: Reply,
) -> Result<Capabilities, SessionError> {
    match reply.status {
        Status::Ok => Ok(Capabilities::parse(
            &conn
                .read_listing("CAPA", MAX_CAPA, "the most popsync reads of a CAPA")
                .await?,
        )),
        // RFC 1939-only servers answer -ERR: they simply have no extensions.
        _ => Ok(Capabilities::default()),
    }
}

/// One message as listed by the server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Listed {
    pub msg: u32,
    pub uidl: String,
    pub size: u64,
}

/// A logged-in session (TRANSACTION state).
pub struct Transaction<S> {
    pub conn: Connection<S>,
    pub capa: Capabilities,
    /// Messages are marked deleted (DELE since the last RSET).
    marked: bool,
}

impl<S: AsyncRead + AsyncWrite + Unpin> Transaction<S> {
    /// UIDL and LIST of the whole mailbox, joined by message number. STAT
    /// comes first: its count bounds the listings, so a server that lists
    /// more messages than it has (or lists for ever) is refused at once.
    pub async fn listing(&mut self) -> Result<Vec<Listed>, SessionError> {
        let server = self.conn.server.clone();
        let malformed = |command: &str| {
            let server = server.clone();
            let command = command.to_owned();
            move |source| SessionError::Malformed {
                server: server.clone(),
                command: command.clone(),
                source,
            }
        };
        let pipelining = self.capa.pipelining();
        if pipelining {
            self.conn
                .send_many(&[Command::Stat, Command::Uidl(None), Command::List(None)])
                .await?;
        } else {
            // Without PIPELINING one command at a time (RFC 2449).
            self.conn.send(&Command::Stat).await?;
        }
        let stat = self.conn.expect_ok("STAT").await?;
        let (count, _) = codec::parse_stat(&stat.text).map_err(malformed("STAT"))?;
        let max = u64::from(count)
            .saturating_mul(LISTING_LINE)
            .saturating_add(LISTING_LINE);
        let why = "more than the messages STAT counted can take";

        if !pipelining {
            self.conn.send(&Command::Uidl(None)).await?;
        }
        let uidl_reply = self.conn.read_status("UIDL").await?;
        let uidls = if uidl_reply.status == Status::Ok {
            let body = self.conn.read_listing("UIDL", max, why).await?;
            Some(codec::parse_uidl_listing(&body).map_err(malformed("UIDL"))?)
        } else if uidl_reply.code.is_some() || self.capa.uidl() {
            // A response code (e.g. [SYS/TEMP]) or a server that announces
            // UIDL means "not now", not "not supported".
            return Err(SessionError::Rejected {
                server,
                command: "UIDL".into(),
                code: uidl_reply.code,
                text: uidl_reply.text,
            });
        } else {
            None
        };
        let Some(uidls) = uidls else {
            if pipelining {
                // LIST's reply is on its way: read it, so that nothing is
                // left unread behind the error.
                if self.conn.read_status("LIST").await?.status == Status::Ok {
                    self.conn.read_listing("LIST", max, why).await?;
                }
            }
            return Err(SessionError::Protocol {
                server,
                command: "UIDL".into(),
                message: "the server does not support UIDL, which popsync needs to tell new mail from old; ask the provider to enable it".into(),
            });
        };
        if !pipelining {
            self.conn.send(&Command::List(None)).await?;
        }
        self.conn.expect_ok("LIST").await?;
        let body = self.conn.read_listing("LIST", max, why).await?;
        let sizes = codec::parse_list_listing(&body).map_err(malformed("LIST"))?;
        let numbered = |command: &str, numbers: &mut dyn Iterator<Item = u32>| {
            let mut seen = std::collections::HashSet::new();
            for msg in numbers {
                if msg == 0 || msg > count || !seen.insert(msg) {
                    return Err(SessionError::Protocol {
                        server: server.clone(),
                        command: command.to_owned(),
                        message: format!(
                            "message {msg} is listed {}, but STAT counts {count} messages",
                            if seen.contains(&msg) && msg <= count && msg > 0 {
                                "twice"
                            } else {
                                "out of range"
                            }
                        ),
                    });
                }
            }
            Ok(())
        };
        numbered("UIDL", &mut uidls.iter().map(|(m, _)| *m))?;
        numbered("LIST", &mut sizes.iter().map(|(m, _)| *m))?;
        let size_of: std::collections::HashMap<u32, u64> = sizes.into_iter().collect();
        let mut out = Vec::with_capacity(uidls.len());
        for (msg, uidl) in uidls {
            let Some(&size) = size_of.get(&msg) else {
                return Err(SessionError::Protocol {
                    server,
                    command: "LIST".into(),
                    message: format!("message {msg} is in the UIDL listing but not in LIST"),
                });
            };
            out.push(Listed { msg, uidl, size });
        }
        out.sort_by_key(|l| l.msg);
        Ok(out)
    }

    /// Send RETR for a message without waiting (pipelining).
    pub async fn send_retr(&mut self, msgs: &[u32]) -> Result<(), SessionError> {
        let cmds: Vec<Command> = msgs.iter().map(|&m| Command::Retr(m)).collect();
        self.conn.send_many(&cmds).await
    }

    /// Read the reply to a RETR sent earlier, streaming the message into
    /// `sink`. `listed` is the size LIST gave: a message that runs far past
    /// it, or arrives slower than `MIN_RATE` allows, is stopped.
    pub async fn read_retr<F, E>(
        &mut self,
        msg: u32,
        listed: u64,
        sink: F,
    ) -> Result<u64, BodyError<E>>
    where
        F: FnMut(&[u8]) -> Result<(), E>,
    {
        let label = format!("RETR {msg}");
        self.conn.expect_ok(&label).await?;
        let bound = self
            .conn
            .bound(retr_limit(listed), "far more than the size LIST announced");
        self.conn.read_body(&label, bound, sink).await
    }

    /// Send TOP for several messages without waiting (pipelining).
    pub async fn send_top(&mut self, msgs: &[u32], lines: u32) -> Result<(), SessionError> {
        let cmds: Vec<Command> = msgs
            .iter()
            .map(|&msg| Command::Top { msg, lines })
            .collect();
        self.conn.send_many(&cmds).await
    }

    /// Read the reply to a TOP sent earlier: the headers and `lines` body
    /// lines, of which at most `limit` bytes are kept (the rest is read and
    /// dropped, so the stream stays in step).
    pub async fn read_top(
        &mut self,
        msg: u32,
        listed: u64,
        limit: usize,
    ) -> Result<Vec<u8>, SessionError> {
        let label = format!("TOP {msg}");
        self.conn.expect_ok(&label).await?;
        let bound = self
            .conn
            .bound(retr_limit(listed), "far more than the size LIST announced");
        let mut kept = Vec::new();
        self.conn
            .read_body(&label, bound, |chunk| {
                let room = limit.saturating_sub(kept.len());
                kept.extend_from_slice(&chunk[..chunk.len().min(room)]);
                Ok::<(), Infallible>(())
            })
            .await
            .map_err(BodyError::into_session)?;
        Ok(kept)
    }

    /// Mark messages deleted; they go at QUIT.
    pub async fn dele(&mut self, msgs: &[u32]) -> Result<(), SessionError> {
        if msgs.is_empty() {
            return Ok(());
        }
        let cmds: Vec<Command> = msgs.iter().map(|&m| Command::Dele(m)).collect();
        self.marked = true;
        if self.capa.pipelining() {
            // A window, as for RETR: a server that stops reading must not
            // leave popsync blocked in a write of every DELE at once.
            for (cmds, msgs) in cmds
                .chunks(crate::window::MAX_COMMANDS)
                .zip(msgs.chunks(crate::window::MAX_COMMANDS))
            {
                self.conn.send_many(cmds).await?;
                for m in msgs {
                    self.conn.expect_ok(&format!("DELE {m}")).await?;
                }
            }
        } else {
            for cmd in &cmds {
                self.conn.simple(cmd).await?;
            }
        }
        Ok(())
    }

    /// Undo DELEs of this session.
    pub async fn rset(&mut self) -> Result<(), SessionError> {
        self.conn.simple(&Command::Rset).await?;
        self.marked = false;
        Ok(())
    }

    /// QUIT: the server commits DELEs (UPDATE state). Only an +OK means they
    /// were committed, so with messages marked the reply is awaited. With
    /// none marked the reply carries no news: the connection is closed once
    /// QUIT is on its way, which saves a round trip.
    pub async fn quit(mut self) -> Result<(), SessionError> {
        if self.marked {
            self.conn.simple(&Command::Quit).await?;
            // Some servers (Courier) answer QUIT before they remove the
            // messages, and over TLS their removal stops when the client
            // hangs up first: wait for the server to close.
            self.conn.await_close().await;
            return Ok(());
        }
        self.conn.send(&Command::Quit).await?;
        self.conn.close().await;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    //! The client against a scripted server over an in-memory pipe: each
    //! step asserts what the client has sent so far, and that nothing more
    //! arrives while the server has not answered.

    use super::*;
    use tokio::io::{DuplexStream, duplex};

    const QUIET: Duration = Duration::from_millis(50);

    fn client(stream: DuplexStream) -> Connection<DuplexStream> {
        Connection::new(stream, "test:110".into(), Duration::from_secs(5), None)
    }

    /// The server side: reads what the client sent.
    struct Script(DuplexStream);

    impl Script {
        /// Nothing arrives within `QUIET`.
        async fn silence(&mut self, while_: &str) {
            let mut byte = [0u8; 1];
            let read = tokio::time::timeout(QUIET, self.0.read(&mut byte)).await;
            assert!(
                read.is_err(),
                "the client sent {:?} {while_}",
                String::from_utf8_lossy(&byte)
            );
        }

        /// Exactly `line` (CRLF added) arrives, and nothing after it.
        async fn expect(&mut self, line: &str) {
            let want = format!("{line}\r\n");
            let mut got = vec![0u8; want.len()];
            self.0.read_exact(&mut got).await.expect("client line");
            assert_eq!(String::from_utf8_lossy(&got), want);
            self.silence(&format!("behind {line:?} before its reply"))
                .await;
        }

        async fn reply(&mut self, text: &str) {
            self.0.write_all(text.as_bytes()).await.expect("reply");
        }
    }

    fn pair() -> (Connection<DuplexStream>, Script) {
        let (a, b) = duplex(1 << 16);
        (client(a), Script(b))
    }

    #[tokio::test]
    async fn nothing_is_sent_before_the_greeting() {
        let (conn, mut server) = pair();
        let greeted = tokio::spawn(Greeted::start(conn));
        server.silence("before the greeting").await;
        server.reply("+OK ready\r\n").await;
        server.expect("CAPA").await;
        server.reply("+OK\r\nUSER\r\nUTF8\r\n.\r\n").await;
        let g = greeted.await.expect("join").expect("greeted");
        assert!(g.capa.user() && g.capa.utf8());
    }

    #[tokio::test]
    async fn each_login_command_waits_for_its_reply_and_utf8_comes_first() {
        let (conn, mut server) = pair();
        let mut g = Greeted::resume(conn, "ready".into());
        g.capa = Capabilities::parse(b"USER\nUTF8\nPIPELINING\n");
        let login = tokio::spawn(async move { g.login("alice", "secret", Mechanism::User).await });
        server.expect("UTF8").await;
        server.reply("+OK UTF8 enabled\r\n").await;
        server.expect("USER alice").await;
        server.reply("+OK\r\n").await;
        server.expect("PASS secret").await;
        server.reply("+OK logged in\r\n").await;
        server.expect("CAPA").await;
        server.reply("+OK\r\nUIDL\r\n.\r\n").await;
        let t = login.await.expect("join").expect("logged in");
        // Only the CAPA after login counts: it has no PIPELINING.
        assert!(!t.capa.pipelining());
    }

    #[tokio::test]
    async fn sasl_continuations_wait_for_each_challenge() {
        let (conn, mut server) = pair();
        let mut g = Greeted::resume(conn, "ready".into());
        g.capa = Capabilities::parse(b"SASL LOGIN\n");
        let login = tokio::spawn(async move {
            g.login("alice", "secret", Mechanism::Sasl(auth::Sasl::Login))
                .await
        });
        server.expect("AUTH LOGIN").await;
        server.reply("+ VXNlcm5hbWU6\r\n").await;
        server.expect("YWxpY2U=").await;
        server.reply("+ UGFzc3dvcmQ6\r\n").await;
        server.expect("c2VjcmV0").await;
        server.reply("+OK\r\n").await;
        server.expect("CAPA").await;
        server.reply("-ERR no CAPA here\r\n").await;
        login.await.expect("join").expect("logged in");
    }

    async fn transaction(capa: &[u8]) -> (Transaction<DuplexStream>, Script) {
        let (conn, server) = pair();
        let t = Transaction {
            conn,
            capa: Capabilities::parse(capa),
            marked: false,
        };
        (t, server)
    }

    #[tokio::test]
    async fn without_pipelining_the_listing_is_one_command_at_a_time() {
        let (mut t, mut server) = transaction(b"UIDL\n").await;
        let listing = tokio::spawn(async move { t.listing().await });
        server.expect("STAT").await;
        server.reply("+OK 1 10\r\n").await;
        server.expect("UIDL").await;
        server.reply("+OK\r\n1 a\r\n.\r\n").await;
        server.expect("LIST").await;
        server.reply("+OK\r\n1 10\r\n.\r\n").await;
        let l = listing.await.expect("join").expect("listing");
        assert_eq!(l[0].uidl, "a");
    }

    #[tokio::test]
    async fn with_pipelining_uidl_and_list_go_together() {
        let (mut t, mut server) = transaction(b"UIDL\nPIPELINING\n").await;
        let listing = tokio::spawn(async move { t.listing().await });
        server.expect("STAT\r\nUIDL\r\nLIST").await;
        server
            .reply("+OK 1 10\r\n+OK\r\n1 a\r\n.\r\n+OK\r\n1 10\r\n.\r\n")
            .await;
        assert_eq!(listing.await.expect("join").expect("listing").len(), 1);
    }

    #[tokio::test]
    async fn a_listing_longer_than_stat_allows_is_refused() {
        let (mut t, mut server) = transaction(b"UIDL\nPIPELINING\n").await;
        let listing = tokio::spawn(async move { t.listing().await });
        server.expect("STAT\r\nUIDL\r\nLIST").await;
        server.reply("+OK 2 20\r\n+OK\r\n").await;
        // Lines for ever: the reply is cut off after what 2 messages can take.
        let line = format!("1 {}\r\n", "a".repeat(70));
        let flood = tokio::spawn(async move {
            for _ in 0..100 {
                if server.0.write_all(line.as_bytes()).await.is_err() {
                    break;
                }
            }
            server
        });
        let err = listing.await.expect("join").expect_err("endless UIDL");
        assert!(matches!(err, SessionError::TooLong { .. }), "{err}");
        assert_eq!(err.exit_code(), ExitCode::Protocol);
        drop(flood);
    }

    #[tokio::test]
    async fn repeated_or_out_of_range_message_numbers_are_refused() {
        for uidl in ["1 a\r\n1 b\r\n", "1 a\r\n3 b\r\n"] {
            let (mut t, mut server) = transaction(b"UIDL\nPIPELINING\n").await;
            let listing = tokio::spawn(async move { t.listing().await });
            server.expect("STAT\r\nUIDL\r\nLIST").await;
            server
                .reply(&format!(
                    "+OK 2 20\r\n+OK\r\n{uidl}.\r\n+OK\r\n1 10\r\n2 10\r\n.\r\n"
                ))
                .await;
            let err = listing.await.expect("join").expect_err(uidl);
            assert_eq!(err.exit_code(), ExitCode::Protocol, "{uidl}: {err}");
            assert!(err.to_string().contains("STAT counts 2"), "{err}");
        }
    }

    #[tokio::test]
    async fn a_message_far_larger_than_listed_is_stopped() {
        let (mut t, mut server) = transaction(b"PIPELINING\n").await;
        let retr = tokio::spawn(async move {
            t.send_retr(&[1]).await?;
            t.read_retr(1, 100, |_| Ok::<(), Infallible>(()))
                .await
                .map_err(BodyError::into_session)
        });
        server.expect("RETR 1").await;
        server.reply("+OK\r\n").await;
        let line = "x".repeat(1000) + "\r\n";
        let flood = tokio::spawn(async move {
            for _ in 0..2000 {
                if server.0.write_all(line.as_bytes()).await.is_err() {
                    break;
                }
            }
            server
        });
        let err = retr.await.expect("join").expect_err("RETR past its size");
        assert!(matches!(err, SessionError::TooLong { .. }), "{err}");
        assert_eq!(err.exit_code(), ExitCode::Protocol);
        drop(flood);
    }

    #[tokio::test(start_paused = true)]
    async fn a_reply_that_trickles_past_its_deadline_is_temporary() {
        let (mut t, mut server) = transaction(b"PIPELINING\n").await;
        let retr = tokio::spawn(async move {
            t.send_retr(&[1]).await?;
            t.read_retr(1, 100, |_| Ok::<(), Infallible>(()))
                .await
                .map_err(BodyError::into_session)
        });
        server.expect("RETR 1").await;
        server.reply("+OK\r\n").await;
        // One octet every 4 s: each read is within the 5 s timeout, yet the
        // reply never ends.
        let trickle = tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_secs(4)).await;
                if server.0.write_all(b"x").await.is_err() {
                    break;
                }
            }
        });
        let err = retr.await.expect("join").expect_err("trickled RETR");
        assert!(matches!(err, SessionError::TooSlow { .. }), "{err}");
        assert_eq!(err.exit_code(), ExitCode::TempFail);
        trickle.abort();
    }

    #[tokio::test]
    async fn after_deletions_quit_waits_for_the_server_to_close() {
        let (mut t, mut server) = transaction(b"").await;
        t.marked = true;
        let quit = tokio::spawn(t.quit());
        server.expect("QUIT").await;
        server.reply("+OK Bye-bye.\r\n").await;
        // The server is still removing messages: the client stays.
        tokio::time::sleep(QUIET).await;
        assert!(!quit.is_finished(), "hung up before the server closed");
        drop(server);
        quit.await.expect("join").expect("quit");
    }

    #[tokio::test]
    async fn err_where_a_message_was_due_is_a_protocol_error() {
        let (mut t, mut server) = transaction(b"PIPELINING\n").await;
        let retr = tokio::spawn(async move {
            t.send_retr(&[1, 2]).await?;
            t.read_retr(1, 10, |_| Ok::<(), Infallible>(()))
                .await
                .map_err(BodyError::into_session)
        });
        server.expect("RETR 1\r\nRETR 2").await;
        server.reply("-ERR no such message\r\n").await;
        let err = retr.await.expect("join").expect_err("-ERR to RETR");
        assert_eq!(err.exit_code(), ExitCode::Protocol);
    }
}
