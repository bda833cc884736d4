//! Commands as values, rendered to wire bytes in exactly one place; CR, LF
//! and NUL are refused in anything put on the wire.

use super::*;

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
pub(super) const REDACTED: &str = "<redacted>";

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
