//! Status lines: `+OK`/`-ERR`/`+` continuations, RFC 2449 / 3206 response
//! codes, and finding the end of a line.

use super::*;

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
