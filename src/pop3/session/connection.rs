//! One byte stream to one server: a read buffer, commands sent (several in
//! one write when pipelining), status lines and multi-line bodies read, each
//! read under the timeout and each reply under its `Bound`. It knows no
//! protocol state; `authorization` and `transaction` build on it.

use std::convert::Infallible;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
// tokio's clock, so that deadlines and the timers that enforce them agree.
use tokio::time::Instant;

use super::{BodyError, MAX_LISTING, MIN_RATE, SessionError};
use crate::pop3::codec::{self, Command, Decoded, MultilineDecoder, Status, StatusLine};

/// Where `-vv` protocol lines go. Passwords never reach it: commands are
/// traced in `Command::redacted` form and server text is sanitised.
pub type Trace = Box<dyn Fn(&str) + Send + Sync>;

/// A byte stream to one server with a read buffer and per-read timeout.
pub struct Connection<S> {
    stream: S,
    buf: Vec<u8>,
    /// Start of unread bytes in `buf`.
    pos: usize,
    pub(super) server: String,
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
