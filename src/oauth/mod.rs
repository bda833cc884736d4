//! OAuth2 built in: `popsync auth login` obtains tokens once (the device
//! flow of RFC 8628, or the code flow with PKCE, RFC 7636, and a loopback
//! redirect, RFC 8252), and `fetch` refreshes them itself, so that no
//! external token helper is needed for Gmail or Microsoft 365.
//!
//! `login` (session setup) asks `access_token` for the secret of an account
//! with `oauth = {...}`; `main` calls `command` for `popsync auth ...`.
//! Tokens never leave this module except as the SASL secret.

pub mod command;
mod device;
mod http;
mod loopback;
mod refresh;
mod store;

use std::path::PathBuf;

use chrono::{DateTime, Utc};

use crate::config::SecretError;
use crate::exit::ExitCode;
use crate::net::NetError;

pub use refresh::access_token;
pub use store::{TokenFile, Tokens};

/// Why tokens could not be obtained, refreshed or stored. Each says what
/// failed, where, and what to do.
#[derive(Debug, thiserror::Error)]
pub enum OAuthError {
    #[error("no OAuth2 tokens are stored for this account; run `popsync auth login {account}`")]
    NotLoggedIn { account: String },
    #[error(
        "{endpoint} refused the stored refresh token (invalid_grant{}): it was revoked or has expired; run `popsync auth login {account}`",
        detail_part(description)
    )]
    Revoked {
        account: String,
        endpoint: String,
        description: String,
    },
    #[error(
        "{endpoint} refused the authorization code (invalid_grant{}); run `popsync auth login {account}` again",
        detail_part(description)
    )]
    CodeRefused {
        account: String,
        endpoint: String,
        description: String,
    },
    #[error("the code expired; run `popsync auth login {account}` again")]
    CodeExpired { account: String },
    #[error(
        "the authorization was denied (access_denied{}) at {endpoint}",
        detail_part(description)
    )]
    Denied {
        endpoint: String,
        description: String,
    },
    #[error(
        "{endpoint} answered with the OAuth2 error {error}{}",
        detail_part(description)
    )]
    Refused {
        endpoint: String,
        error: String,
        description: String,
    },
    #[error("cannot reach {endpoint}: {detail}; try again later")]
    Unreachable { endpoint: String, detail: String },
    #[error(
        "{endpoint} answered HTTP {status} (a server error, or too many requests); try again later"
    )]
    ServerError { endpoint: String, status: u16 },
    #[error(
        "TLS certificate of {endpoint} is not trusted: {detail}; set oauth.ca_file if the provider uses your own CA"
    )]
    Certificate { endpoint: String, detail: String },
    #[error("{endpoint} sent an answer popsync cannot use: {detail}")]
    BadResponse { endpoint: String, detail: String },
    #[error("{0}")]
    Config(String),
    #[error("cannot get the OAuth2 client secret: {0}")]
    ClientSecret(#[source] SecretError),
    #[error("oauth.ca_file: {0}")]
    CaFile(#[source] NetError),
    #[error("cannot {action} {}: {source}", path.display())]
    Store {
        action: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "token file {} is damaged ({detail}); run `popsync auth login {account}`",
        path.display()
    )]
    Damaged {
        account: String,
        path: PathBuf,
        detail: String,
    },
    #[error(
        "the redirect to 127.0.0.1 did not carry this login's state (a stale or forged redirect); run `popsync auth login {account} --browser` again"
    )]
    StateMismatch { account: String },
    #[error("{0}")]
    Browser(String),
    #[error("no redirect came back from the browser within {}s (command_timeout); run `popsync auth login {account} --browser` again", timeout.as_secs())]
    BrowserTimeout {
        account: String,
        timeout: std::time::Duration,
    },
}

fn detail_part(description: &str) -> String {
    if description.is_empty() {
        String::new()
    } else {
        format!(": {description}")
    }
}

impl OAuthError {
    /// DESIGN.md: refused 77; temporary 75; configuration 78; local I/O 74.
    pub fn exit_code(&self) -> ExitCode {
        match self {
            OAuthError::NotLoggedIn { .. }
            | OAuthError::Revoked { .. }
            | OAuthError::CodeRefused { .. }
            | OAuthError::Denied { .. }
            | OAuthError::Refused { .. }
            | OAuthError::Certificate { .. }
            | OAuthError::Damaged { .. }
            | OAuthError::StateMismatch { .. } => ExitCode::NoPerm,
            OAuthError::CodeExpired { .. }
            | OAuthError::Unreachable { .. }
            | OAuthError::ServerError { .. }
            | OAuthError::BrowserTimeout { .. } => ExitCode::TempFail,
            OAuthError::BadResponse { .. } => ExitCode::Protocol,
            OAuthError::Config(_) | OAuthError::ClientSecret(_) | OAuthError::CaFile(_) => {
                ExitCode::Config
            }
            OAuthError::Store { .. } | OAuthError::Browser(_) => ExitCode::IoError,
        }
    }
}

/// The clock for token lifetimes: `POPSYNC_NOW` when set (DESIGN.md: it
/// replaces the clock), else the time now, read at each call so that a
/// token that expires during a long run is seen to.
pub fn now() -> DateTime<Utc> {
    std::env::var("POPSYNC_NOW")
        .ok()
        .and_then(|s| DateTime::parse_from_rfc3339(&s).ok())
        .map_or_else(Utc::now, |t| t.with_timezone(&Utc))
}

/// RFC 3339, UTC, whole seconds: how expiry times are shown.
pub fn rfc3339(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}
