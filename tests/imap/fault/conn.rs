//! The scripted IMAP server's connection loop: one thread per connection
//! reads command lines and literals (sending "+" for synchronising ones),
//! records each command, fires the faults of `Trigger::Command`, stalls
//! where told, and answers the commands that need no mailbox (CAPABILITY,
//! LOGIN, AUTHENTICATE, CREATE, ...) itself; APPEND is in `append.rs`, the
//! mailbox commands in `mailbox.rs`.

use std::io::{self, Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::thread;
use std::time::Duration;

use super::parse::{Part, Tok, literal_at_end, masked, shown, tokenize};
use super::state::Shared;
use super::{Fault, Point, Trigger};

/// The longest command line (without literals) the server reads.
pub(super) const MAX_LINE: usize = 64 * 1024;
/// The largest literal it accepts.
pub(super) const MAX_LITERAL: usize = 64 * 1024 * 1024;

pub(super) fn accept_loop(listener: TcpListener, shared: Arc<Shared>) {
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

/// What to do after a command.
pub(super) enum Flow {
    Go,
    Close,
}

pub(super) struct Conn {
    pub(super) stream: TcpStream,
    pub(super) buf: Vec<u8>,
    pub(super) shared: Arc<Shared>,
    pub(super) authenticated: bool,
    pub(super) selected: Option<String>,
}

impl Conn {
    pub(super) fn new(stream: TcpStream, shared: Arc<Shared>) -> Conn {
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

    pub(super) fn stopped(&self) -> bool {
        self.shared.stop.load(Ordering::SeqCst)
    }

    /// Reads more bytes into `buf`; false at end of stream.
    pub(super) fn fill(&mut self) -> io::Result<bool> {
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
    pub(super) fn read_line(&mut self) -> io::Result<Option<Vec<u8>>> {
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
    pub(super) fn read_bytes(&mut self, n: usize) -> io::Result<Option<Vec<u8>>> {
        while self.buf.len() < n {
            if !self.fill()? {
                return Ok(None);
            }
        }
        Ok(Some(self.buf.drain(..n).collect()))
    }

    pub(super) fn send(&mut self, text: &str) -> io::Result<()> {
        self.stream.write_all(text.as_bytes())?;
        self.stream.flush()
    }

    pub(super) fn send_bytes(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.stream.write_all(bytes)?;
        self.stream.flush()
    }

    /// Marks `point` as reached and waits for `release` or the end of the
    /// server.
    pub(super) fn stall(&mut self, point: Point) {
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

    pub(super) fn record(&self, line: String) {
        if !line.is_empty() {
            self.shared.lock().commands.push(line);
        }
    }

    pub(super) fn serve(&mut self) -> io::Result<()> {
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
    pub(super) fn rest_of_command(&mut self, mut line: Vec<u8>) -> io::Result<Option<Vec<Part>>> {
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

    pub(super) fn command(&mut self, line: Vec<u8>) -> io::Result<Flow> {
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

    pub(super) fn login(&mut self, tag: &str, user: &str, pass: &str) -> io::Result<()> {
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

    pub(super) fn authenticate(&mut self, tag: &str, head: &[Tok]) -> io::Result<Flow> {
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
}
