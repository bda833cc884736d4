//! The POP3 wire format, without any I/O.
//!
//! Everything that turns values into bytes or bytes into values lives here so
//! that the async session (`session.rs`) only reads and writes, and so that
//! every parser can be unit-tested with plain byte strings, split at any
//! point. Parsers are pure and bounded: a reader that has not seen a whole
//! line gets "need more" instead of an error, no function here panics on
//! server bytes, and nothing buffers an unbounded amount of data.
//!
//! Callers: the session (commands, status lines, multi-line bodies, listings,
//! CAPA).

use crate::sanitize::sanitize;

use memchr::{memchr, memchr2};

/// Longest status line / listing line we accept (RFC 2449 says 512 octets; we allow more for broken servers).
pub const MAX_LINE: usize = 8192;

/// How much of an offending line an error message quotes: enough to
/// recognise it, short enough not to flood a terminal or a log.
const ERROR_EXCERPT: usize = 100;

/// Longest UID RFC 1939 allows; anything longer is not a UID we can trust.
const MAX_UID: usize = 70;

/// Why a command could not be rendered or a server line could not be parsed.
#[derive(Debug, thiserror::Error, PartialEq, Eq, Clone)]
pub enum CodecError {
    /// A CR, LF or NUL would let a value end the command early and inject another one.
    #[error("refusing to send {what} containing CR, LF or NUL")]
    UnsafeArgument {
        /// Which argument: "user name", "password" or "argument".
        what: &'static str,
    },
    /// The server sent a line longer than we are willing to buffer.
    #[error("line longer than {max} octets")]
    LineTooLong {
        /// The limit that was exceeded.
        max: usize,
    },
    /// A line where "+OK", "-ERR" or "+ " was expected.
    #[error("malformed status line {line:?}")]
    MalformedStatus {
        /// The offending line, sanitised and truncated.
        line: String,
    },
    /// A listing line we refuse to interpret rather than store garbage.
    #[error("malformed {what} line {line:?}")]
    MalformedListing {
        /// Which listing: "UIDL", "LIST" or "STAT".
        what: &'static str,
        /// The offending line, sanitised and truncated.
        line: String,
    },
}

/// A command as a value; rendered to wire bytes in exactly one place.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    /// List the server's capabilities (RFC 2449).
    Capa,
    /// Upgrade to TLS (RFC 2595).
    Stls,
    /// Name for USER/PASS login.
    User(String),
    /// Password for USER/PASS login.
    Pass(String),
    /// Digest login (RFC 1939); `digest` is the hex MD5 digest.
    Apop {
        /// Mailbox name.
        user: String,
        /// Hex MD5 of the greeting's timestamp and the secret.
        digest: String,
    },
    /// Start a SASL exchange (RFC 5034).
    Auth {
        /// SASL mechanism name, e.g. "PLAIN".
        mechanism: String,
        /// Already base64 ("=" for an empty response).
        initial_response: Option<String>,
    },
    /// A bare line answering a "+ " challenge (base64, or "*" to cancel).
    AuthResponse(String),
    /// Mailbox size.
    Stat,
    /// Sizes of all messages (None) or one.
    List(Option<u32>),
    /// Unique ids of all messages (None) or one.
    Uidl(Option<u32>),
    /// Fetch a whole message.
    Retr(u32),
    /// Fetch the header and the first `lines` body lines.
    Top {
        /// Message number.
        msg: u32,
        /// Body lines wanted.
        lines: u32,
    },
    /// Mark a message deleted (takes effect at QUIT).
    Dele(u32),
    /// Unmark all deletions.
    Rset,
    /// Keep-alive.
    Noop,
    /// Ask for UTF-8 mode (RFC 6856), in the AUTHORIZATION state.
    Utf8,
    /// End the session and commit deletions.
    Quit,
}

/// What stands in for a secret in a protocol trace.
const REDACTED: &str = "<redacted>";

impl Command {
    /// Wire bytes including CRLF. Refuses CR, LF or NUL in any string argument (CodecError::UnsafeArgument).
    pub fn to_wire(&self) -> Result<Vec<u8>, CodecError> {
        self.check_arguments()?;
        let mut line = self.render(false).into_bytes();
        line.extend_from_slice(b"\r\n");
        Ok(line)
    }

    /// The command as it may appear in a -vv protocol trace: PASS, APOP digest, AUTH initial response and
    /// AuthResponse are replaced by "<redacted>" (e.g. "PASS <redacted>", "AUTH PLAIN <redacted>"); USER keeps the name.
    pub fn redacted(&self) -> String {
        // The user name comes from config, but a trace goes to a terminal, so
        // it gets the same treatment as server text.
        sanitize(self.render(true).as_bytes(), MAX_LINE)
    }

    /// Short name for error messages: "RETR", "USER", "AUTH PLAIN", ...
    pub fn name(&self) -> String {
        match self {
            Command::Auth { mechanism, .. } => {
                format!("AUTH {}", sanitize(mechanism.as_bytes(), 40))
            }
            Command::AuthResponse(_) => "AUTH response".to_owned(),
            other => other.keyword().to_owned(),
        }
    }

    /// True for commands whose reply is multi-line when +OK: CAPA, LIST(None), UIDL(None), RETR, TOP.
    pub fn is_multiline(&self) -> bool {
        matches!(
            self,
            Command::Capa
                | Command::List(None)
                | Command::Uidl(None)
                | Command::Retr(_)
                | Command::Top { .. }
        )
    }

    fn keyword(&self) -> &'static str {
        match self {
            Command::Capa => "CAPA",
            Command::Stls => "STLS",
            Command::User(_) => "USER",
            Command::Pass(_) => "PASS",
            Command::Apop { .. } => "APOP",
            Command::Auth { .. } => "AUTH",
            // Not a command of its own: it has no keyword on the wire.
            Command::AuthResponse(_) => "",
            Command::Stat => "STAT",
            Command::List(_) => "LIST",
            Command::Uidl(_) => "UIDL",
            Command::Retr(_) => "RETR",
            Command::Top { .. } => "TOP",
            Command::Dele(_) => "DELE",
            Command::Rset => "RSET",
            Command::Noop => "NOOP",
            Command::Utf8 => "UTF8",
            Command::Quit => "QUIT",
        }
    }

    fn check_arguments(&self) -> Result<(), CodecError> {
        match self {
            Command::User(name) => check_argument(name, "user name"),
            Command::Pass(password) => check_argument(password, "password"),
            Command::Apop { user, digest } => {
                check_argument(user, "user name")?;
                check_argument(digest, "argument")
            }
            Command::Auth {
                mechanism,
                initial_response,
            } => {
                check_argument(mechanism, "argument")?;
                initial_response
                    .as_deref()
                    .map_or(Ok(()), |r| check_argument(r, "argument"))
            }
            Command::AuthResponse(response) => check_argument(response, "argument"),
            _ => Ok(()),
        }
    }

    /// The one place a command's text is spelled out; `redact` swaps secrets
    /// for a marker so that the trace and the wire cannot drift apart.
    fn render(&self, redact: bool) -> String {
        let secret = |s: &str| -> String {
            if redact {
                REDACTED.to_owned()
            } else {
                s.to_owned()
            }
        };
        let keyword = self.keyword();
        match self {
            Command::User(name) => format!("{keyword} {name}"),
            Command::Pass(password) => format!("{keyword} {}", secret(password)),
            Command::Apop { user, digest } => format!("{keyword} {user} {}", secret(digest)),
            Command::Auth {
                mechanism,
                initial_response: None,
            } => format!("{keyword} {mechanism}"),
            Command::Auth {
                mechanism,
                initial_response: Some(response),
            } => {
                // RFC 5034: an empty initial response is sent as "=", since a
                // trailing space with nothing after it means nothing at all.
                let response = if response.is_empty() { "=" } else { response };
                format!("{keyword} {mechanism} {}", secret(response))
            }
            Command::AuthResponse(response) => secret(response),
            Command::List(Some(n))
            | Command::Uidl(Some(n))
            | Command::Retr(n)
            | Command::Dele(n) => {
                format!("{keyword} {n}")
            }
            Command::Top { msg, lines } => format!("{keyword} {msg} {lines}"),
            Command::Capa
            | Command::Stls
            | Command::Stat
            | Command::List(None)
            | Command::Uidl(None)
            | Command::Rset
            | Command::Noop
            | Command::Utf8
            | Command::Quit => keyword.to_owned(),
        }
    }
}

fn check_argument(value: &str, what: &'static str) -> Result<(), CodecError> {
    if value.bytes().any(|b| matches!(b, b'\r' | b'\n' | b'\0')) {
        Err(CodecError::UnsafeArgument { what })
    } else {
        Ok(())
    }
}

/// The status indicator at the start of a server reply.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    /// "+OK"
    Ok,
    /// "-ERR"
    Err,
    /// "+ " (SASL challenge; a bare "+" too)
    Continue,
}

/// RFC 2449 / RFC 3206 response codes, the text inside [ ] at the start of the text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RespCode {
    /// The mailbox is locked by another session (RFC 2449).
    InUse,
    /// Logged in too soon after the last login (RFC 2449).
    LoginDelay,
    /// A temporary server-side problem (RFC 3206).
    SysTemp,
    /// A permanent server-side problem (RFC 3206).
    SysPerm,
    /// The credentials were wrong (RFC 3206).
    Auth,
    /// A code we do not know, as the server sent it.
    Other(String),
}

impl RespCode {
    /// IN-USE, LOGIN-DELAY and SYS/TEMP are temporary failures (exit 75 class).
    pub fn is_temporary(&self) -> bool {
        matches!(
            self,
            RespCode::InUse | RespCode::LoginDelay | RespCode::SysTemp
        )
    }

    /// RFC 2449 codes are hierarchical ("SYS/TEMP"); a client that does not
    /// know a sub-level must act on the parent, so "AUTH/EXPIRED" is AUTH.
    fn from_code(code: &str) -> RespCode {
        let mut levels = code.split('/');
        let first = levels.next().unwrap_or_default();
        if first.eq_ignore_ascii_case("IN-USE") {
            RespCode::InUse
        } else if first.eq_ignore_ascii_case("LOGIN-DELAY") {
            RespCode::LoginDelay
        } else if first.eq_ignore_ascii_case("AUTH") {
            RespCode::Auth
        } else if first.eq_ignore_ascii_case("SYS") {
            match levels.next() {
                Some(l) if l.eq_ignore_ascii_case("TEMP") => RespCode::SysTemp,
                Some(l) if l.eq_ignore_ascii_case("PERM") => RespCode::SysPerm,
                _ => RespCode::Other(code.to_owned()),
            }
        } else {
            RespCode::Other(code.to_owned())
        }
    }
}

/// One parsed status line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StatusLine {
    /// The indicator.
    pub status: Status,
    /// The RESP-CODES code, if the text started with one.
    pub code: Option<RespCode>,
    /// The rest of the line after status (and after the [CODE] if any), trimmed, lossily UTF-8; for Continue: the
    /// challenge payload (base64 text). Not sanitised: pass it through `sanitize` before printing.
    pub text: String,
}

/// Parse one status line. `line` is without its line terminator (the caller strips "\r\n" or bare "\n").
/// Case: "+OK"/"-ERR" are matched case-insensitively (broken servers); "+OK" with nothing after is fine.
pub fn parse_status(line: &[u8]) -> Result<StatusLine, CodecError> {
    if line.len() > MAX_LINE {
        return Err(CodecError::LineTooLong { max: MAX_LINE });
    }
    let (status, rest) = if let Some(rest) = indicator(line, b"+OK") {
        (Status::Ok, rest)
    } else if let Some(rest) = indicator(line, b"-ERR") {
        (Status::Err, rest)
    } else if let Some(rest) = indicator(line, b"+") {
        (Status::Continue, rest)
    } else {
        return Err(CodecError::MalformedStatus {
            line: sanitize(line, ERROR_EXCERPT),
        });
    };
    let rest = rest.trim_ascii();
    let (code, text) = match status {
        // A challenge is base64; a leading "[" there is payload, not a code.
        Status::Continue => (None, rest),
        Status::Ok | Status::Err => split_resp_code(rest),
    };
    Ok(StatusLine {
        status,
        code,
        text: String::from_utf8_lossy(text.trim_ascii()).into_owned(),
    })
}

/// `line` without `word` when it starts with it (ASCII case-insensitively)
/// followed by the end of line or white space; "+OKAY" is not "+OK".
fn indicator<'a>(line: &'a [u8], word: &[u8]) -> Option<&'a [u8]> {
    let head = line.get(..word.len())?;
    let rest = line.get(word.len()..)?;
    let separated = matches!(rest.first(), None | Some(b' ' | b'\t'));
    (head.eq_ignore_ascii_case(word) && separated).then_some(rest)
}

/// Split "[CODE] text" into the code and the text. Anything that does not
/// fit RFC 2449's grammar (no closing bracket, spaces or control characters
/// inside) stays text, because the server then did not mean a code.
fn split_resp_code(text: &[u8]) -> (Option<RespCode>, &[u8]) {
    let Some(inner) = text.strip_prefix(b"[") else {
        return (None, text);
    };
    let Some(close) = memchr(b']', inner) else {
        return (None, text);
    };
    let (Some(code), Some(after)) = (inner.get(..close), inner.get(close + 1..)) else {
        return (None, text);
    };
    let level_ok = |level: &[u8]| {
        !level.is_empty()
            && level
                .iter()
                .all(|&b| (0x21..=0x7e).contains(&b) && b != b'[')
    };
    if !code.split(|&b| b == b'/').all(level_ok) {
        return (None, text);
    }
    // Checked above: every byte is printable ASCII.
    let code = String::from_utf8_lossy(code);
    (Some(RespCode::from_code(&code)), after)
}

/// Find the end of the first line in `buf`. Returns Ok(Some((line_len_without_terminator, total_consumed))) when a
/// '\n' is present (terminator "\r\n" or bare "\n"), Ok(None) when more bytes are needed, Err(LineTooLong) when buf
/// holds more than MAX_LINE bytes without a '\n'. Uses memchr.
///
/// Precisely: a line of MAX_LINE octets is accepted with either terminator, so a
/// buffer of MAX_LINE octets plus a pending '\r' still asks for more.
pub fn split_line(buf: &[u8]) -> Result<Option<(usize, usize)>, CodecError> {
    let too_long = Err(CodecError::LineTooLong { max: MAX_LINE });
    // Only look as far as a longest legal line could reach, so a flood of
    // bytes without a newline costs a bounded scan.
    let window = buf.get(..MAX_LINE + 2).unwrap_or(buf);
    match memchr(b'\n', window) {
        Some(lf) => {
            let len = if lf > 0 && window.get(lf - 1) == Some(&b'\r') {
                lf - 1
            } else {
                lf
            };
            if len > MAX_LINE {
                too_long
            } else {
                Ok(Some((len, lf + 1)))
            }
        }
        None if buf.len() > MAX_LINE + 1 => too_long,
        None if buf.len() == MAX_LINE + 1 && buf.last() != Some(&b'\r') => too_long,
        None => Ok(None),
    }
}

/// What the decoder knows about the stream it is in the middle of. Only a
/// few bytes of state, never a line, so lines of any length stream through.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
enum DecodeState {
    /// At the first byte of a line (the body begins here).
    #[default]
    LineStart,
    /// Inside a line; copying spans.
    InLine,
    /// Saw a '\r' inside a line; whether it is data depends on the next byte.
    Cr,
    /// The line began with '.', which was dropped (unstuffing or terminator).
    Dot,
    /// Saw ".\r" at a line start: the terminator unless the next byte is not '\n'.
    DotCr,
    /// The terminator was consumed.
    Done,
}

/// Streaming decoder for the body of a multi-line response (everything after the +OK status line).
/// Dot-unstuffing, the ".\r\n" terminator (also ".\n" from bare-LF servers), CRLF -> LF, bare LF kept as LF,
/// a CR not followed by LF kept as data. Works across arbitrary chunk boundaries (a chunk may end in the middle of
/// "\r\n.\r\n"); never buffers a whole line: it holds only a few bytes of state, so lines of any length stream through.
#[derive(Debug, Default)]
pub struct MultilineDecoder {
    state: DecodeState,
    lines: u64,
}

/// How far a call to [`MultilineDecoder::decode`] got.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decoded {
    /// The terminator has not been seen yet; all input was consumed.
    NeedMore,
    /// The terminator was seen; bytes after it were left unconsumed.
    End,
}

impl MultilineDecoder {
    /// A decoder positioned at the start of a body.
    pub fn new() -> Self {
        Self::default()
    }

    /// Decode from `input`, appending decoded bytes (LF line ends) to `out`. Returns (consumed, Decoded).
    /// When End is returned, `consumed` stops right after the terminator so the caller keeps the following bytes
    /// (pipelining!). When NeedMore is returned, all of `input` was consumed.
    pub fn decode(&mut self, input: &[u8], out: &mut Vec<u8>) -> (usize, Decoded) {
        let mut pos = 0;
        while let Some(rest) = input.get(pos..).filter(|r| !r.is_empty()) {
            if self.state == DecodeState::Done {
                break;
            }
            if self.state == DecodeState::InLine {
                // The fast path: ordinary text is copied span by span.
                match memchr2(b'\r', b'\n', rest) {
                    None => {
                        out.extend_from_slice(rest);
                        pos = input.len();
                    }
                    Some(at) => {
                        out.extend_from_slice(rest.get(..at).unwrap_or_default());
                        if rest.get(at) == Some(&b'\n') {
                            self.end_line(out);
                        } else {
                            self.state = DecodeState::Cr;
                        }
                        pos += at + 1;
                    }
                }
                continue;
            }
            let Some(&byte) = rest.first() else { break };
            // `consume` is false where the byte belongs to the next state,
            // which sees it again on the next turn of the loop.
            let consume = match (self.state, byte) {
                (DecodeState::LineStart, b'.') => {
                    self.state = DecodeState::Dot;
                    true
                }
                (DecodeState::LineStart | DecodeState::Cr, b'\n') => {
                    self.end_line(out);
                    true
                }
                (DecodeState::LineStart, b'\r') => {
                    self.state = DecodeState::Cr;
                    true
                }
                (DecodeState::Dot, b'\r') => {
                    self.state = DecodeState::DotCr;
                    true
                }
                (DecodeState::Dot | DecodeState::DotCr, b'\n') => {
                    self.state = DecodeState::Done;
                    true
                }
                (DecodeState::Cr | DecodeState::DotCr, _) => {
                    // That '\r' was not part of a line end, so it is data.
                    out.push(b'\r');
                    self.state = DecodeState::InLine;
                    false
                }
                (DecodeState::LineStart | DecodeState::Dot, _) => {
                    self.state = DecodeState::InLine;
                    false
                }
                (DecodeState::InLine | DecodeState::Done, _) => false,
            };
            if consume {
                pos += 1;
            }
        }
        let status = if self.state == DecodeState::Done {
            Decoded::End
        } else {
            Decoded::NeedMore
        };
        (pos, status)
    }

    /// Number of decoded lines emitted so far (used to bound listings).
    pub fn lines(&self) -> u64 {
        self.lines
    }

    fn end_line(&mut self, out: &mut Vec<u8>) {
        out.push(b'\n');
        self.lines = self.lines.saturating_add(1);
        self.state = DecodeState::LineStart;
    }
}

/// One line of a UIDL listing: "msg uid". RFC 1939: uid is 1-70 chars in 0x21..=0x7E. Reject others
/// (MalformedListing) rather than store garbage.
pub fn parse_uidl_listing(body: &[u8]) -> Result<Vec<(u32, String)>, CodecError> {
    body_lines(body).map(parse_uidl_line).collect()
}

/// The text of "+OK 1 uid" (after the status indicator).
pub fn parse_uidl_single(text: &str) -> Result<(u32, String), CodecError> {
    parse_uidl_line(text.as_bytes())
}

/// LIST: "msg size"; extra tokens after size are ignored (RFC 1939 allows them).
pub fn parse_list_listing(body: &[u8]) -> Result<Vec<(u32, u64)>, CodecError> {
    body_lines(body)
        .map(|line| {
            let mut tokens = tokens(line);
            let msg = tokens.next().and_then(message_number);
            let size = tokens.next().and_then(decimal);
            match (msg, size) {
                (Some(msg), Some(size)) => Ok((msg, size)),
                _ => Err(malformed_listing("LIST", line)),
            }
        })
        .collect()
}

/// The text of "+OK count size" (after the status indicator); extra tokens are ignored like LIST's.
pub fn parse_stat(text: &str) -> Result<(u32, u64), CodecError> {
    let line = text.as_bytes();
    let mut tokens = tokens(line);
    // Unlike a message number, a count may be 0.
    let count = tokens
        .next()
        .and_then(decimal)
        .and_then(|n| u32::try_from(n).ok());
    let size = tokens.next().and_then(decimal);
    match (count, size) {
        (Some(count), Some(size)) => Ok((count, size)),
        _ => Err(malformed_listing("STAT", line)),
    }
}

fn parse_uidl_line(line: &[u8]) -> Result<(u32, String), CodecError> {
    let mut tokens = tokens(line);
    let msg = tokens.next().and_then(message_number);
    let uid = tokens.next().filter(|uid| {
        (1..=MAX_UID).contains(&uid.len()) && uid.iter().all(|b| (0x21..=0x7e).contains(b))
    });
    // A third token means the UID had a space in it: not a UID.
    match (msg, uid, tokens.next()) {
        (Some(msg), Some(uid), None) => Ok((msg, String::from_utf8_lossy(uid).into_owned())),
        _ => Err(malformed_listing("UIDL", line)),
    }
}

/// Lines of a decoded body, tolerating a CR the server left in and blank
/// lines, which carry nothing to misread.
fn body_lines(body: &[u8]) -> impl Iterator<Item = &[u8]> {
    body.split(|&b| b == b'\n')
        .map(|line| line.strip_suffix(b"\r").unwrap_or(line))
        .filter(|line| !line.trim_ascii().is_empty())
}

fn tokens(line: &[u8]) -> impl Iterator<Item = &[u8]> {
    line.split(|&b| b == b' ' || b == b'\t')
        .filter(|t| !t.is_empty())
}

/// A plain decimal: `str::parse` alone would also take "+5".
fn decimal(token: &[u8]) -> Option<u64> {
    if token.is_empty() || !token.iter().all(u8::is_ascii_digit) {
        return None;
    }
    std::str::from_utf8(token).ok()?.parse().ok()
}

/// Messages are numbered from 1 (RFC 1939).
fn message_number(token: &[u8]) -> Option<u32> {
    decimal(token)
        .and_then(|n| u32::try_from(n).ok())
        .filter(|&n| n >= 1)
}

fn malformed_listing(what: &'static str, line: &[u8]) -> CodecError {
    CodecError::MalformedListing {
        what,
        line: sanitize(line, ERROR_EXCERPT),
    }
}

/// Parsed CAPA reply (RFC 2449). Capability names are case-insensitive; store them upper-cased.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Capabilities {
    entries: Vec<Capability>,
    raw: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Capability {
    name: String,
    args: Vec<String>,
}

impl Capabilities {
    /// Parse a decoded CAPA body; never fails and ignores empty lines, because
    /// a capability we cannot read is one we simply do not use.
    pub fn parse(body: &[u8]) -> Capabilities {
        let mut caps = Capabilities::default();
        for line in body_lines(body) {
            let line = String::from_utf8_lossy(line.trim_ascii()).into_owned();
            let mut words = line.split_ascii_whitespace();
            if let Some(name) = words.next() {
                caps.entries.push(Capability {
                    name: name.to_ascii_uppercase(),
                    args: words.map(str::to_owned).collect(),
                });
            }
            caps.raw.push(line);
        }
        caps
    }

    /// Whether the server announced `name` (case-insensitive).
    pub fn has(&self, name: &str) -> bool {
        self.find(name).is_some()
    }

    /// The arguments after `name`, as the server spelled them.
    pub fn args(&self, name: &str) -> Option<&[String]> {
        self.find(name).map(|c| c.args.as_slice())
    }

    /// STLS (RFC 2595).
    pub fn stls(&self) -> bool {
        self.has("STLS")
    }

    /// PIPELINING: commands may be sent without waiting for each reply.
    pub fn pipelining(&self) -> bool {
        self.has("PIPELINING")
    }

    /// UTF8 (RFC 6856): the server can be asked to send raw UTF-8 headers.
    pub fn utf8(&self) -> bool {
        self.has("UTF8")
    }

    /// TOP.
    pub fn top(&self) -> bool {
        self.has("TOP")
    }

    /// UIDL.
    pub fn uidl(&self) -> bool {
        self.has("UIDL")
    }

    /// USER/PASS login is allowed.
    pub fn user(&self) -> bool {
        self.has("USER")
    }

    /// RESP-CODES: "[" at the start of a reply text is a response code.
    pub fn resp_codes(&self) -> bool {
        self.has("RESP-CODES")
    }

    /// From "SASL PLAIN LOGIN", upper-cased; several SASL lines are merged.
    pub fn sasl_mechanisms(&self) -> Vec<String> {
        self.entries
            .iter()
            .filter(|c| c.name == "SASL")
            .flat_map(|c| c.args.iter().map(|m| m.to_ascii_uppercase()))
            .collect()
    }

    /// LOGIN-DELAY n (seconds); may be "LOGIN-DELAY 900 USER" after login.
    pub fn login_delay(&self) -> Option<u64> {
        let first = self.args("LOGIN-DELAY")?.first()?;
        decimal(first.as_bytes())
    }

    /// EXPIRE: Some(Expire::Never) for "NEVER", Some(Expire::Days(n)); "USER" suffix ignored.
    pub fn expire(&self) -> Option<Expire> {
        let first = self.args("EXPIRE")?.first()?;
        if first.eq_ignore_ascii_case("NEVER") {
            Some(Expire::Never)
        } else {
            decimal(first.as_bytes()).map(Expire::Days)
        }
    }

    /// The raw lines, for `probe`. Server text: sanitise before printing.
    pub fn lines(&self) -> impl Iterator<Item = &str> {
        self.raw.iter().map(String::as_str)
    }

    fn find(&self, name: &str) -> Option<&Capability> {
        self.entries
            .iter()
            .find(|c| c.name.eq_ignore_ascii_case(name))
    }
}

/// The server's retention policy (RFC 2449 EXPIRE).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Expire {
    /// Messages are kept until deleted.
    Never,
    /// Messages may be deleted this many days after retrieval (0: at once).
    Days(u64),
}

#[cfg(test)]
mod tests {
    use super::*;

    // ---- status lines ----

    fn status(line: &str) -> StatusLine {
        parse_status(line.as_bytes()).expect("valid status line")
    }

    #[test]
    fn ok_status_keeps_text() {
        let s = status("+OK POP3 server ready <1896.697170952@dbc.mtview.ca.us>");
        assert_eq!(s.status, Status::Ok);
        assert_eq!(s.code, None);
        assert_eq!(
            s.text,
            "POP3 server ready <1896.697170952@dbc.mtview.ca.us>"
        );
    }

    #[test]
    fn err_status_keeps_text() {
        let s = status("-ERR no such message");
        assert_eq!(s.status, Status::Err);
        assert_eq!(s.text, "no such message");
    }

    #[test]
    fn lower_case_indicators_are_accepted() {
        assert_eq!(status("+ok fine").status, Status::Ok);
        assert_eq!(status("-err nope").status, Status::Err);
        assert_eq!(status("-Err nope").text, "nope");
    }

    #[test]
    fn ok_without_text_is_fine() {
        let s = status("+OK");
        assert_eq!((s.status, s.code, s.text.as_str()), (Status::Ok, None, ""));
        assert_eq!(status("-ERR").status, Status::Err);
    }

    #[test]
    fn plus_space_is_a_continuation_with_payload() {
        let s = status("+ VXNlcm5hbWU6");
        assert_eq!(s.status, Status::Continue);
        assert_eq!(s.text, "VXNlcm5hbWU6");
    }

    #[test]
    fn bare_plus_is_an_empty_continuation() {
        let s = status("+");
        assert_eq!(s.status, Status::Continue);
        assert_eq!(s.text, "");
        assert_eq!(status("+ ").text, "");
    }

    #[test]
    fn garbage_is_a_malformed_status() {
        for line in [
            "",
            "OK",
            "+OKAY",
            "-ERROR x",
            "* OK imap",
            "+x",
            " +OK",
            "HTTP/1.1 400",
        ] {
            assert!(
                matches!(
                    parse_status(line.as_bytes()),
                    Err(CodecError::MalformedStatus { .. })
                ),
                "{line:?}"
            );
        }
    }

    #[test]
    fn malformed_status_error_is_sanitised_and_short() {
        let mut line = b"\x1b[31mevil".to_vec();
        line.extend(std::iter::repeat_n(b'x', 500));
        let Err(CodecError::MalformedStatus { line }) = parse_status(&line) else {
            panic!("expected MalformedStatus");
        };
        assert!(!line.contains('\x1b'));
        assert!(line.starts_with("\\x1b[31mevil"));
        assert!(line.chars().count() <= ERROR_EXCERPT + 1);
        assert!(line.ends_with('…'));
    }

    #[test]
    fn overlong_status_is_refused() {
        let mut line = b"+OK ".to_vec();
        line.resize(MAX_LINE + 1, b'a');
        assert_eq!(
            parse_status(&line),
            Err(CodecError::LineTooLong { max: MAX_LINE })
        );
    }

    #[test]
    fn status_line_with_invalid_utf8_is_read_lossily() {
        let s = parse_status(b"-ERR caf\xe9").expect("parses");
        assert_eq!(s.text, "caf\u{fffd}");
    }

    #[test]
    fn known_response_codes_are_recognised() {
        let cases = [
            ("-ERR [IN-USE] mailbox locked", RespCode::InUse),
            ("-ERR [LOGIN-DELAY] wait", RespCode::LoginDelay),
            ("-ERR [SYS/TEMP] try later", RespCode::SysTemp),
            ("-ERR [SYS/PERM] go away", RespCode::SysPerm),
            ("-ERR [AUTH] bad password", RespCode::Auth),
            ("-ERR [sys/temp] lower case", RespCode::SysTemp),
        ];
        for (line, code) in cases {
            let s = status(line);
            assert_eq!(s.status, Status::Err);
            assert_eq!(s.code, Some(code), "{line}");
        }
        assert_eq!(
            status("-ERR [IN-USE] mailbox locked").text,
            "mailbox locked"
        );
    }

    #[test]
    fn unknown_sub_level_falls_back_to_its_parent() {
        assert_eq!(status("-ERR [AUTH/EXPIRED] x").code, Some(RespCode::Auth));
        assert_eq!(
            status("-ERR [SYS/TEMP/DISK] x").code,
            Some(RespCode::SysTemp)
        );
    }

    #[test]
    fn unknown_code_is_kept_as_other() {
        let s = status("-ERR [X-QUOTA/FULL] over quota");
        assert_eq!(s.code, Some(RespCode::Other("X-QUOTA/FULL".into())));
        assert_eq!(s.text, "over quota");
        assert_eq!(
            status("-ERR [SYS] x").code,
            Some(RespCode::Other("SYS".into()))
        );
    }

    #[test]
    fn code_without_closing_bracket_is_text() {
        let s = status("-ERR [IN-USE mailbox locked");
        assert_eq!(s.code, None);
        assert_eq!(s.text, "[IN-USE mailbox locked");
    }

    #[test]
    fn bracketed_text_with_spaces_is_not_a_code() {
        let s = status("-ERR [not a code] hello");
        assert_eq!(s.code, None);
        assert_eq!(s.text, "[not a code] hello");
        assert_eq!(status("-ERR [] x").code, None);
        assert_eq!(status("-ERR [SYS//TEMP] x").code, None);
    }

    #[test]
    fn code_on_ok_reply_is_parsed_and_not_on_a_challenge() {
        assert_eq!(status("+OK [IN-USE] odd").code, Some(RespCode::InUse));
        assert_eq!(status("+ [AUTH]").code, None);
    }

    #[test]
    fn temporary_codes_are_exactly_in_use_login_delay_and_sys_temp() {
        assert!(RespCode::InUse.is_temporary());
        assert!(RespCode::LoginDelay.is_temporary());
        assert!(RespCode::SysTemp.is_temporary());
        assert!(!RespCode::SysPerm.is_temporary());
        assert!(!RespCode::Auth.is_temporary());
        assert!(!RespCode::Other("IN-USE-ISH".into()).is_temporary());
    }

    // ---- commands ----

    fn wire(c: Command) -> String {
        String::from_utf8(c.to_wire().expect("renders")).expect("ascii")
    }

    #[test]
    fn every_command_renders_with_crlf() {
        let cases = [
            (Command::Capa, "CAPA\r\n"),
            (Command::Stls, "STLS\r\n"),
            (Command::User("joe".into()), "USER joe\r\n"),
            (Command::Pass("se cret".into()), "PASS se cret\r\n"),
            (
                Command::Apop {
                    user: "mrose".into(),
                    digest: "c4c9334bac560ecc979e58001b3e22fb".into(),
                },
                "APOP mrose c4c9334bac560ecc979e58001b3e22fb\r\n",
            ),
            (
                Command::Auth {
                    mechanism: "PLAIN".into(),
                    initial_response: None,
                },
                "AUTH PLAIN\r\n",
            ),
            (
                Command::Auth {
                    mechanism: "PLAIN".into(),
                    initial_response: Some("AGpvZQBzZWNyZXQ=".into()),
                },
                "AUTH PLAIN AGpvZQBzZWNyZXQ=\r\n",
            ),
            (
                Command::Auth {
                    mechanism: "EXTERNAL".into(),
                    initial_response: Some("=".into()),
                },
                "AUTH EXTERNAL =\r\n",
            ),
            (Command::AuthResponse("dGVzdA==".into()), "dGVzdA==\r\n"),
            (Command::AuthResponse("*".into()), "*\r\n"),
            (Command::Stat, "STAT\r\n"),
            (Command::List(None), "LIST\r\n"),
            (Command::List(Some(2)), "LIST 2\r\n"),
            (Command::Uidl(None), "UIDL\r\n"),
            (Command::Uidl(Some(7)), "UIDL 7\r\n"),
            (Command::Retr(1), "RETR 1\r\n"),
            (Command::Top { msg: 3, lines: 0 }, "TOP 3 0\r\n"),
            (Command::Dele(4294967295), "DELE 4294967295\r\n"),
            (Command::Rset, "RSET\r\n"),
            (Command::Noop, "NOOP\r\n"),
            (Command::Quit, "QUIT\r\n"),
        ];
        for (command, expected) in cases {
            assert_eq!(wire(command), expected);
        }
    }

    #[test]
    fn empty_initial_response_is_sent_as_equals_sign() {
        let c = Command::Auth {
            mechanism: "EXTERNAL".into(),
            initial_response: Some(String::new()),
        };
        assert_eq!(wire(c), "AUTH EXTERNAL =\r\n");
    }

    #[test]
    fn cr_lf_and_nul_are_refused_in_every_string_argument() {
        for bad in ["a\rb", "a\nb", "a\0b", "joe\r\nDELE 1"] {
            let unsafe_ = |what| Err(CodecError::UnsafeArgument { what });
            assert_eq!(Command::User(bad.into()).to_wire(), unsafe_("user name"));
            assert_eq!(Command::Pass(bad.into()).to_wire(), unsafe_("password"));
            let apop_user = Command::Apop {
                user: bad.into(),
                digest: "abc".into(),
            };
            assert_eq!(apop_user.to_wire(), unsafe_("user name"));
            let apop_digest = Command::Apop {
                user: "joe".into(),
                digest: bad.into(),
            };
            assert_eq!(apop_digest.to_wire(), unsafe_("argument"));
            let auth_mech = Command::Auth {
                mechanism: bad.into(),
                initial_response: None,
            };
            assert_eq!(auth_mech.to_wire(), unsafe_("argument"));
            let auth_ir = Command::Auth {
                mechanism: "PLAIN".into(),
                initial_response: Some(bad.into()),
            };
            assert_eq!(auth_ir.to_wire(), unsafe_("argument"));
            assert_eq!(
                Command::AuthResponse(bad.into()).to_wire(),
                unsafe_("argument")
            );
        }
    }

    #[test]
    fn redacted_never_contains_the_secret() {
        let secret = "hunter2-sekrit";
        let commands = [
            Command::Pass(secret.into()),
            Command::Apop {
                user: "joe".into(),
                digest: secret.into(),
            },
            Command::Auth {
                mechanism: "PLAIN".into(),
                initial_response: Some(secret.into()),
            },
            Command::AuthResponse(secret.into()),
        ];
        for c in commands {
            let r = c.redacted();
            assert!(!r.contains(secret), "{r}");
            assert!(r.contains(REDACTED), "{r}");
        }
        assert_eq!(Command::Pass(secret.into()).redacted(), "PASS <redacted>");
        let auth = Command::Auth {
            mechanism: "PLAIN".into(),
            initial_response: Some(secret.into()),
        };
        assert_eq!(auth.redacted(), "AUTH PLAIN <redacted>");
        let apop = Command::Apop {
            user: "joe".into(),
            digest: secret.into(),
        };
        assert_eq!(apop.redacted(), "APOP joe <redacted>");
    }

    #[test]
    fn redacted_keeps_user_name_and_plain_commands() {
        assert_eq!(Command::User("joe".into()).redacted(), "USER joe");
        assert_eq!(Command::Retr(5).redacted(), "RETR 5");
        let auth = Command::Auth {
            mechanism: "XOAUTH2".into(),
            initial_response: None,
        };
        assert_eq!(auth.redacted(), "AUTH XOAUTH2");
        assert_eq!(Command::User("a\x1bb".into()).redacted(), "USER a\\x1bb");
    }

    #[test]
    fn names_are_short_and_carry_no_arguments() {
        assert_eq!(Command::Retr(9).name(), "RETR");
        assert_eq!(Command::User("joe".into()).name(), "USER");
        assert_eq!(Command::Pass("x".into()).name(), "PASS");
        assert_eq!(Command::Top { msg: 1, lines: 2 }.name(), "TOP");
        let auth = Command::Auth {
            mechanism: "PLAIN".into(),
            initial_response: Some("x".into()),
        };
        assert_eq!(auth.name(), "AUTH PLAIN");
        assert!(!Command::AuthResponse("x".into()).name().contains('x'));
    }

    #[test]
    fn multiline_commands_are_the_listing_and_fetch_ones() {
        assert!(Command::Capa.is_multiline());
        assert!(Command::List(None).is_multiline());
        assert!(Command::Uidl(None).is_multiline());
        assert!(Command::Retr(1).is_multiline());
        assert!(Command::Top { msg: 1, lines: 0 }.is_multiline());
        assert!(!Command::List(Some(1)).is_multiline());
        assert!(!Command::Uidl(Some(1)).is_multiline());
        assert!(!Command::Stat.is_multiline());
        assert!(!Command::Dele(1).is_multiline());
        assert!(!Command::Quit.is_multiline());
    }

    // ---- split_line ----

    #[test]
    fn split_line_finds_crlf() {
        assert_eq!(split_line(b"+OK hi\r\nmore"), Ok(Some((6, 8))));
    }

    #[test]
    fn split_line_accepts_bare_lf() {
        assert_eq!(split_line(b"+OK hi\nmore"), Ok(Some((6, 7))));
        assert_eq!(split_line(b"\n"), Ok(Some((0, 1))));
        assert_eq!(split_line(b"\r\n"), Ok(Some((0, 2))));
    }

    #[test]
    fn split_line_asks_for_more_without_newline() {
        assert_eq!(split_line(b""), Ok(None));
        assert_eq!(split_line(b"+OK hi"), Ok(None));
        assert_eq!(split_line(b"+OK hi\r"), Ok(None));
    }

    #[test]
    fn split_line_refuses_too_long_lines() {
        let too_long = Err(CodecError::LineTooLong { max: MAX_LINE });
        assert_eq!(split_line(&vec![b'a'; MAX_LINE + 1]), too_long);
        assert_eq!(split_line(&vec![b'a'; MAX_LINE * 4]), too_long);
        let mut long_with_lf = vec![b'a'; MAX_LINE + 1];
        long_with_lf.push(b'\n');
        assert_eq!(split_line(&long_with_lf), too_long);
    }

    #[test]
    fn split_line_accepts_a_line_of_exactly_max_line() {
        let mut buf = vec![b'a'; MAX_LINE];
        assert_eq!(split_line(&buf), Ok(None));
        buf.push(b'\r');
        assert_eq!(split_line(&buf), Ok(None));
        buf.push(b'\n');
        assert_eq!(split_line(&buf), Ok(Some((MAX_LINE, MAX_LINE + 2))));
        buf.truncate(MAX_LINE);
        buf.push(b'\n');
        assert_eq!(split_line(&buf), Ok(Some((MAX_LINE, MAX_LINE + 1))));
    }

    // ---- multi-line decoder ----

    /// Feed `chunks` in order until End; returns the output, the total bytes
    /// consumed and whether the terminator was seen.
    fn decode_chunks<'a>(chunks: impl IntoIterator<Item = &'a [u8]>) -> (Vec<u8>, usize, bool) {
        let mut decoder = MultilineDecoder::new();
        let mut out = Vec::new();
        let mut consumed = 0;
        for chunk in chunks {
            let (n, state) = decoder.decode(chunk, &mut out);
            consumed += n;
            match state {
                Decoded::End => return (out, consumed, true),
                Decoded::NeedMore => assert_eq!(n, chunk.len(), "NeedMore must consume everything"),
            }
        }
        (out, consumed, false)
    }

    fn decode_all(input: &[u8]) -> (Vec<u8>, usize, bool) {
        decode_chunks([input])
    }

    #[test]
    fn decoder_converts_a_simple_message() {
        let (out, consumed, end) = decode_all(b"Subject: hi\r\n\r\nbody\r\n.\r\n");
        assert!(end);
        assert_eq!(out, b"Subject: hi\n\nbody\n");
        assert_eq!(consumed, 24);
    }

    #[test]
    fn decoder_counts_lines() {
        let mut d = MultilineDecoder::new();
        let mut out = Vec::new();
        d.decode(b"1 a\r\n2 b\r\n\r\n.\r\n", &mut out);
        assert_eq!(d.lines(), 3);
    }

    #[test]
    fn stuffed_lone_dot_is_a_dot_line_not_the_end() {
        let (out, _, end) = decode_all(b"a\r\n..\r\nb\r\n.\r\n");
        assert!(end);
        assert_eq!(out, b"a\n.\nb\n");
    }

    #[test]
    fn only_the_first_dot_is_removed() {
        let (out, _, _) = decode_all(b"...x\r\n.x\r\n.\r\n");
        assert_eq!(out, b"..x\nx\n");
    }

    #[test]
    fn dots_inside_a_line_are_data() {
        let (out, _, _) = decode_all(b"a.b\r\nc .\r\n.\r\n");
        assert_eq!(out, b"a.b\nc .\n");
    }

    #[test]
    fn empty_body_ends_at_once() {
        let (out, consumed, end) = decode_all(b".\r\n");
        assert!(end);
        assert!(out.is_empty());
        assert_eq!(consumed, 3);
    }

    #[test]
    fn bare_lf_server_is_understood() {
        let (out, consumed, end) = decode_all(b"a\n..\n.b\n\n.\nNEXT");
        assert!(end);
        assert_eq!(out, b"a\n.\nb\n\n");
        assert_eq!(consumed, 11);
    }

    #[test]
    fn cr_not_followed_by_lf_is_data() {
        let (out, _, _) = decode_all(b"a\rb\r\n\rc\r\n.\rd\r\nx\r\r\n.\r\n");
        assert_eq!(out, b"a\rb\n\rc\n\rd\nx\r\n");
    }

    #[test]
    fn crlf_split_between_cr_and_lf_is_one_line_end() {
        let (out, _, end) = decode_chunks([&b"abc\r"[..], b"\ndef\r", b"\n.\r\n"]);
        assert!(end);
        assert_eq!(out, b"abc\ndef\n");
    }

    #[test]
    fn terminator_split_across_chunks_is_found() {
        let (out, consumed, end) = decode_chunks([&b"abc\r\n"[..], b".", b"\r", b"\nQUIT-REPLY"]);
        assert!(end);
        assert_eq!(out, b"abc\n");
        assert_eq!(consumed, 8);
    }

    #[test]
    fn bytes_after_the_terminator_are_not_consumed() {
        let input = b"x\r\n.\r\n+OK next reply\r\n";
        let mut d = MultilineDecoder::new();
        let mut out = Vec::new();
        let (n, state) = d.decode(input, &mut out);
        assert_eq!(state, Decoded::End);
        assert_eq!(&input[n..], b"+OK next reply\r\n");
        // A finished decoder takes nothing more.
        assert_eq!(d.decode(b"more", &mut out), (0, Decoded::End));
        assert_eq!(out, b"x\n");
    }

    #[test]
    fn every_split_point_and_byte_by_byte_give_the_same_result() {
        let input: &[u8] = b"Received: x\r\n..\r\n...y\r\n.z\r\na\rb\r\n\r\n\r\r\n.\r\r\nbare\nlast\r\n.\r\n+OK tail\r\n";
        let (expected, consumed, end) = decode_all(input);
        assert!(end);
        assert_eq!(&input[consumed..], b"+OK tail\r\n");
        assert_eq!(
            expected,
            b"Received: x\n.\n..y\nz\na\rb\n\n\r\n\r\nbare\nlast\n"
        );
        for split in 0..=input.len() {
            let (a, b) = input.split_at(split);
            assert_eq!(
                decode_chunks([a, b]),
                (expected.clone(), consumed, true),
                "split at {split}"
            );
        }
        let bytes = input.chunks(1);
        assert_eq!(decode_chunks(bytes), (expected, consumed, true));
    }

    #[test]
    fn a_one_megabyte_line_streams_through() {
        let mut input = vec![b'x'; 1 << 20];
        input.extend_from_slice(b"\r\n.\r\n");
        let (out, consumed, end) = decode_chunks(input.chunks(4096));
        assert!(end);
        assert_eq!(consumed, input.len());
        assert_eq!(out.len(), (1 << 20) + 1);
    }

    #[test]
    fn unterminated_body_needs_more() {
        let (out, consumed, end) = decode_all(b"a\r\n.x\r\n");
        assert!(!end);
        assert_eq!(consumed, 7);
        assert_eq!(out, b"a\nx\n");
    }

    // ---- listings ----

    #[test]
    fn uidl_listing_parses() {
        let body = b"1 whqtswO00WBw418f9t5JxYwZ\n2 QhdPYR:00WBw1Ph7x7\n";
        assert_eq!(
            parse_uidl_listing(body),
            Ok(vec![
                (1, "whqtswO00WBw418f9t5JxYwZ".to_owned()),
                (2, "QhdPYR:00WBw1Ph7x7".to_owned())
            ])
        );
        assert_eq!(parse_uidl_listing(b""), Ok(vec![]));
    }

    #[test]
    fn uidl_with_space_is_refused() {
        let err = parse_uidl_listing(b"1 abc def\n").expect_err("space in uid");
        assert_eq!(
            err,
            CodecError::MalformedListing {
                what: "UIDL",
                line: "1 abc def".into()
            }
        );
    }

    #[test]
    fn uidl_of_71_chars_is_refused_and_70_accepted() {
        let uid70 = "u".repeat(70);
        assert_eq!(parse_uidl_single(&format!("3 {uid70}")), Ok((3, uid70)));
        let body = format!("1 {}\n", "u".repeat(71));
        assert!(parse_uidl_listing(body.as_bytes()).is_err());
    }

    #[test]
    fn uidl_with_control_or_non_ascii_bytes_is_refused() {
        assert!(parse_uidl_listing(b"1 ab\x7fc\n").is_err());
        assert!(parse_uidl_listing(b"1 caf\xc3\xa9\n").is_err());
        assert!(parse_uidl_listing(b"1\n").is_err());
    }

    #[test]
    fn non_numeric_message_number_is_refused() {
        for body in [
            &b"x abc\n"[..],
            b"-1 abc\n",
            b"+1 abc\n",
            b"0 abc\n",
            b"4294967296 abc\n",
        ] {
            assert!(parse_uidl_listing(body).is_err(), "{body:?}");
        }
        assert!(parse_list_listing(b"one 120\n").is_err());
    }

    #[test]
    fn uidl_single_parses_status_text() {
        assert_eq!(
            parse_uidl_single("2 QhdPYR:00WBw1Ph7x7"),
            Ok((2, "QhdPYR:00WBw1Ph7x7".into()))
        );
        assert!(parse_uidl_single("2").is_err());
        assert!(parse_uidl_single("").is_err());
    }

    #[test]
    fn list_listing_parses_and_ignores_extra_tokens() {
        let body = b"1 120\r\n2 200 extra stuff\n\n3 0\n";
        assert_eq!(
            parse_list_listing(body),
            Ok(vec![(1, 120), (2, 200), (3, 0)])
        );
    }

    #[test]
    fn list_listing_refuses_a_bad_size() {
        let err = parse_list_listing(b"1 12x\n").expect_err("bad size");
        assert!(matches!(
            err,
            CodecError::MalformedListing { what: "LIST", .. }
        ));
        assert!(parse_list_listing(b"1\n").is_err());
    }

    #[test]
    fn stat_parses_count_and_size() {
        assert_eq!(parse_stat("2 320"), Ok((2, 320)));
        assert_eq!(parse_stat("0 0"), Ok((0, 0)));
        assert_eq!(parse_stat("2 320 messages"), Ok((2, 320)));
        let err = parse_stat("lots").expect_err("not a number");
        assert!(matches!(
            err,
            CodecError::MalformedListing { what: "STAT", .. }
        ));
    }

    // ---- CAPA ----

    const CAPA: &[u8] = b"TOP\nuser\nSASL PLAIN login Xoauth2\nRESP-CODES\nLOGIN-DELAY 900 USER\n\
        PIPELINING\nEXPIRE 31 USER\nUIDL\nIMPLEMENTATION Shlemazle-Plotz-v302\n\n";

    #[test]
    fn capa_flags_are_found_case_insensitively() {
        let caps = Capabilities::parse(CAPA);
        assert!(caps.top() && caps.user() && caps.uidl() && caps.pipelining() && caps.resp_codes());
        assert!(!caps.stls());
        assert!(caps.has("user") && caps.has("Implementation"));
        assert_eq!(
            caps.args("implementation"),
            Some(&["Shlemazle-Plotz-v302".to_owned()][..])
        );
        assert_eq!(caps.args("STLS"), None);
    }

    #[test]
    fn capa_sasl_mechanisms_are_upper_cased() {
        let caps = Capabilities::parse(CAPA);
        assert_eq!(caps.sasl_mechanisms(), ["PLAIN", "LOGIN", "XOAUTH2"]);
        assert!(Capabilities::parse(b"USER\n").sasl_mechanisms().is_empty());
    }

    #[test]
    fn capa_login_delay_and_expire_ignore_the_user_suffix() {
        let caps = Capabilities::parse(CAPA);
        assert_eq!(caps.login_delay(), Some(900));
        assert_eq!(caps.expire(), Some(Expire::Days(31)));
        let never = Capabilities::parse(b"EXPIRE NEVER\nLOGIN-DELAY soon\n");
        assert_eq!(never.expire(), Some(Expire::Never));
        assert_eq!(never.login_delay(), None);
        assert_eq!(Capabilities::parse(b"").expire(), None);
    }

    #[test]
    fn capa_keeps_raw_lines_without_empty_ones() {
        let caps = Capabilities::parse(b"STLS\r\n\r\n  TOP  \n");
        assert_eq!(caps.lines().collect::<Vec<_>>(), ["STLS", "TOP"]);
        assert!(caps.stls());
    }

    // ---- properties ----

    mod properties {
        use super::*;
        use proptest::prelude::*;

        /// What a server does to a body: stuff leading dots, end lines with
        /// `eol`, append the terminator.
        fn stuff(lines: &[Vec<u8>], eol: &[u8]) -> Vec<u8> {
            let mut wire = Vec::new();
            for line in lines {
                if line.first() == Some(&b'.') {
                    wire.push(b'.');
                }
                wire.extend_from_slice(line);
                wire.extend_from_slice(eol);
            }
            wire.push(b'.');
            wire.extend_from_slice(eol);
            wire
        }

        fn joined(lines: &[Vec<u8>]) -> Vec<u8> {
            lines
                .iter()
                .flat_map(|l| l.iter().copied().chain([b'\n']))
                .collect()
        }

        fn line_bytes() -> impl Strategy<Value = u8> {
            // Weighted toward the bytes that matter to the decoder.
            prop_oneof![Just(b'.'), Just(b'\r'), Just(b'x'), any::<u8>()]
                .prop_filter("no LF inside a line", |&b| b != b'\n')
        }

        proptest! {
            #[test]
            fn stuffed_crlf_body_unstuffs_to_the_original(
                lines in prop::collection::vec(prop::collection::vec(line_bytes(), 0..12), 0..12),
                split in any::<prop::sample::Index>(),
                tail in prop::collection::vec(any::<u8>(), 0..8),
            ) {
                let mut wire = stuff(&lines, b"\r\n");
                let body_len = wire.len();
                wire.extend_from_slice(&tail);
                let (a, b) = wire.split_at(split.index(wire.len() + 1));
                let (out, consumed, end) = decode_chunks([a, b]);
                prop_assert!(end);
                prop_assert_eq!(consumed, body_len);
                prop_assert_eq!(out, joined(&lines));
            }

            #[test]
            fn stuffed_bare_lf_body_unstuffs_to_the_original(
                lines in prop::collection::vec(
                    prop::collection::vec(line_bytes().prop_filter("no CR", |&b| b != b'\r'), 0..12),
                    0..12,
                ),
            ) {
                let wire = stuff(&lines, b"\n");
                let (out, consumed, end) = decode_chunks(wire.chunks(3));
                prop_assert!(end);
                prop_assert_eq!(consumed, wire.len());
                prop_assert_eq!(out, joined(&lines));
            }

            #[test]
            fn decoder_never_over_consumes_on_arbitrary_input(
                input in prop::collection::vec(prop_oneof![Just(b'.'), Just(b'\r'), Just(b'\n'), any::<u8>()], 0..64),
                chunk in 1usize..8,
            ) {
                let (_, consumed, end) = decode_chunks(input.chunks(chunk));
                prop_assert!(consumed <= input.len());
                prop_assert!(end || consumed == input.len());
            }

            #[test]
            fn parsers_never_panic_on_arbitrary_bytes(input in prop::collection::vec(any::<u8>(), 0..80)) {
                let _ = parse_status(&input);
                let _ = split_line(&input);
                let _ = parse_uidl_listing(&input);
                let _ = parse_list_listing(&input);
                let text = String::from_utf8_lossy(&input);
                let _ = parse_uidl_single(&text);
                let _ = parse_stat(&text);
                let caps = Capabilities::parse(&input);
                let _ = (caps.login_delay(), caps.expire(), caps.sasl_mechanisms());
            }

        }
    }
}
