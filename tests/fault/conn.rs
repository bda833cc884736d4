//! The fault server's connection loop: accepting, reading commands (and
//! noting what was pipelined), the honest reply to each command, and the
//! faults applied to it.

use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio_rustls::TlsAcceptor;

use super::tls::serve_tls;
use super::*;

pub(super) async fn accept_loop(
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

/// Serve one connection to the end; any I/O error just ends it.
pub(super) async fn serve<S: AsyncRead + AsyncWrite + Unpin>(
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
pub(super) struct Reply {
    pub(super) bytes: Vec<u8>,
    pub(super) multiline: bool,
    pub(super) effect: Effect,
}

/// What a command changes, applied unless its fault replaced the reply.
pub(super) enum Effect {
    None,
    User(String),
    Login,
    Dele(usize),
    Rset,
    /// Commit the DELEs (if logged in) and close.
    Quit,
}

impl Reply {
    pub(super) fn ok(text: &str) -> Reply {
        Reply::single(format!("+OK {text}"), Effect::None)
    }

    pub(super) fn err(text: &str) -> Reply {
        Reply::single(format!("-ERR {text}"), Effect::None)
    }

    pub(super) fn single(line: String, effect: Effect) -> Reply {
        Reply {
            bytes: format!("{line}\r\n").into_bytes(),
            multiline: false,
            effect,
        }
    }

    /// "+OK FIRST", then `body` dot-stuffed with CRLF, then ".\r\n".
    pub(super) fn multi(first: &str, body: &[u8]) -> Reply {
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
pub(super) fn stuff(body: &[u8]) -> Vec<u8> {
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
pub(super) fn wire_size(body: &[u8]) -> u64 {
    let lf = body.iter().filter(|&&b| b == b'\n').count();
    let unterminated = usize::from(!body.is_empty() && !body.ends_with(b"\n"));
    (body.len() + lf + 2 * unterminated) as u64
}

pub(super) struct Conn<S> {
    pub(super) stream: S,
    pub(super) inbuf: Vec<u8>,
    pub(super) state: Arc<Mutex<State>>,
    pub(super) index: usize,
    /// The name given with USER, waiting for PASS.
    pub(super) user: Option<String>,
    /// The maildrop as of login (TRANSACTION state); None before.
    pub(super) snapshot: Option<Vec<Msg>>,
    pub(super) deleted: Vec<bool>,
    /// Lines at the front of `inbuf` that arrived before the last reply was
    /// written.
    pub(super) ahead: usize,
    /// `Builder::login_handoff`, `Builder::strict_no_pipelining`.
    pub(super) handoff: bool,
    pub(super) strict: bool,
    /// A strict server refused a SASL answer sent before its challenge.
    pub(super) refused_ahead: bool,
}

impl<S: AsyncRead + AsyncWrite + Unpin> Conn<S> {
    pub(super) fn state(&self) -> MutexGuard<'_, State> {
        lock(&self.state)
    }

    pub(super) async fn run(&mut self) -> std::io::Result<()> {
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
    pub(super) async fn next_line(&mut self) -> std::io::Result<Option<(String, bool)>> {
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
    pub(super) async fn before_reply(&mut self, state_changing: bool) {
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
    pub(super) fn discard(&mut self) {
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
    pub(super) fn no_answer(&self) -> Reply {
        if self.refused_ahead {
            Reply::err(PIPELINED_ERR)
        } else {
            Reply::err("client left")
        }
    }

    /// A reply is written: the whole lines the server has already read
    /// were sent without waiting for it.
    pub(super) fn note_ahead(&mut self) {
        self.ahead = self.inbuf.iter().filter(|&&b| b == b'\n').count();
    }

    /// Read one command line (without CRLF); None when the client left.
    pub(super) async fn read_line(&mut self) -> std::io::Result<Option<String>> {
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
    pub(super) async fn hold(&mut self, d: Duration) -> bool {
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

    pub(super) async fn write(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        self.stream.write_all(bytes).await?;
        self.stream.flush().await
    }

    /// Send `reply`, bent by `fault`, and apply its effect. Ok(false): the
    /// connection is over (QUIT, or a fault that closes it).
    pub(super) async fn send_with(
        &mut self,
        reply: Reply,
        fault: Option<Fault>,
    ) -> std::io::Result<bool> {
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

    pub(super) fn apply(&mut self, effect: Effect) {
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
    pub(super) async fn answer(&mut self, line: &str) -> std::io::Result<(Option<On>, Reply)> {
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

    pub(super) fn login_reply(&self, ok: bool) -> Reply {
        if ok {
            Reply::single("+OK logged in".into(), Effect::Login)
        } else {
            Reply::err("[AUTH] invalid user name or password")
        }
    }

    /// Messages not marked deleted, with their numbers.
    pub(super) fn visible(&self) -> impl Iterator<Item = (usize, &Msg)> {
        self.snapshot
            .iter()
            .flatten()
            .enumerate()
            .filter(|(i, _)| !self.deleted[*i])
            .map(|(i, m)| (i + 1, m))
    }

    /// Message `n` (1-based) unless deleted.
    pub(super) fn message(&self, n: u32) -> Option<&Msg> {
        let i = (n as usize).checked_sub(1)?;
        let m = self.snapshot.as_ref()?.get(i)?;
        (!self.deleted[i]).then_some(m)
    }
}

/// MD5 in lower-case hex (APOP).
pub(super) fn md5_hex(data: &[u8]) -> String {
    use md5::Digest as _;
    md5::Md5::digest(data)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// The header, the blank line and the first `lines` lines of the body.
pub(super) fn top_of(body: &[u8], lines: usize) -> Vec<u8> {
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
