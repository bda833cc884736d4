//! How delivery into an IMAP mailbox fails. Every message names the IMAP
//! server (never the POP3 one) and says what to do; the message itself
//! always stays on the POP3 server.

use crate::config::SecretError;
use crate::exit::ExitCode;
use crate::net::NetError;

#[derive(Debug, thiserror::Error)]
pub enum ImapError {
    #[error("IMAP target: {0}")]
    Net(NetError),
    #[error("IMAP target: {0}")]
    Secret(SecretError),
    #[error(
        "IMAP server {server} does not offer STARTTLS, and tls = \"starttls\" forbids continuing in clear text; use tls = \"implicit\" (port 993) in the imap target"
    )]
    NoStarttls { server: String },
    #[error(
        "IMAP server {server} refused the login of {user} ({text}); check the user and password of the imap target"
    )]
    Login {
        server: String,
        user: String,
        text: String,
    },
    #[error(
        "mailbox {mailbox:?} does not exist on IMAP server {server} ({text}); create it, or set create = true in the imap target"
    )]
    MailboxMissing {
        server: String,
        mailbox: String,
        text: String,
    },
    #[error(
        "IMAP server {server} refused to APPEND to {mailbox:?}: {text}; the message stays on the POP3 server"
    )]
    Refused {
        server: String,
        mailbox: String,
        text: String,
    },
    #[error(
        "a message of {size} bytes is larger than the {limit} bytes IMAP server {server} accepts (APPENDLIMIT); it stays on the POP3 server"
    )]
    TooBig {
        server: String,
        size: u64,
        limit: u64,
    },
    #[error(
        "the connection to IMAP server {server} was lost {during}; the message stays on the POP3 server and is tried again next run"
    )]
    Dropped { server: String, during: String },
    #[error(
        "IMAP server {server} did not answer {during} within {secs} s (timeout); the message stays on the POP3 server and is tried again next run"
    )]
    Timeout {
        server: String,
        during: String,
        secs: u64,
    },
    #[error("IMAP server {server} sent an unexpected reply {during}: {text}")]
    Protocol {
        server: String,
        during: String,
        text: String,
    },
    #[error("cannot spool a message for IMAP server {server}: {source}")]
    Spool {
        server: String,
        source: std::io::Error,
    },
}

impl ImapError {
    /// The connection to `server` went away `during` something.
    pub fn dropped(server: &str, during: &str) -> ImapError {
        ImapError::Dropped {
            server: server.to_owned(),
            during: during.to_owned(),
        }
    }

    pub fn exit_code(&self) -> ExitCode {
        match self {
            ImapError::Net(e) => e.exit_code(),
            ImapError::Secret(_) => ExitCode::Config,
            ImapError::NoStarttls { .. } | ImapError::Login { .. } => ExitCode::NoPerm,
            ImapError::MailboxMissing { .. }
            | ImapError::Refused { .. }
            | ImapError::TooBig { .. }
            | ImapError::Spool { .. } => ExitCode::IoError,
            ImapError::Dropped { .. } | ImapError::Timeout { .. } => ExitCode::TempFail,
            ImapError::Protocol { .. } => ExitCode::Protocol,
        }
    }
}
