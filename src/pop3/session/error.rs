//! How a session fails: `SessionError`, each variant naming the server (and,
//! where there is one, the command), with its DESIGN.md exit code; and
//! `BodyError`, which keeps a sink's (a delivery's) own error apart from the
//! session's.

use std::convert::Infallible;
use std::time::Duration;

use super::MIN_RATE;
use crate::exit::ExitCode;
use crate::pop3::auth;
use crate::pop3::codec::{CodecError, RespCode};

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
