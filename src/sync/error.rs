//! Why an account's sync failed: what `fetch` and `check` report, with
//! the exit code each failure maps to.

use std::path::PathBuf;

use crate::deliver::DeliveryError;
use crate::exit::ExitCode;
use crate::filter::FilterError;
use crate::login::SetupError;
use crate::pop3::session::{BodyError, SessionError};
use crate::store::StoreError;

/// Why an account's session failed. Each says what failed and what to do.
#[derive(Debug, thiserror::Error)]
pub enum SyncError {
    #[error(
        "another popsync run is working on this account (lock {}); skipped, the next run will catch up",
        path.display()
    )]
    Locked { path: PathBuf },
    #[error("cannot create lock file {}: {source}", path.display())]
    LockFile {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(transparent)]
    Setup(#[from] SetupError),
    #[error(transparent)]
    Session(SessionError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Filter(FilterError),
    #[error(transparent)]
    Delivery(#[from] DeliveryError),
    #[error(
        "{server}: every one of the {on_server} UIDLs on the server is unknown, while the seen-store knows {known} messages of this account: the server has probably renumbered its UIDLs. Nothing was fetched, to avoid downloading the whole mailbox again. If you do want everything again, run `popsync fetch {account} --accept-uidl-reset`"
    )]
    UidlReset {
        server: String,
        account: String,
        on_server: usize,
        known: usize,
    },
    #[error(
        "the seen-store records an interrupted delivery to {target:?}, which popsync cannot check; resolve it with `popsync seen forget`"
    )]
    UnknownPending { target: String },
}

impl From<SessionError> for SyncError {
    fn from(e: SessionError) -> Self {
        SyncError::Session(e)
    }
}

impl From<BodyError<DeliveryError>> for SyncError {
    /// A RETR streamed into a delivery: the session failed, or the delivery.
    fn from(e: BodyError<DeliveryError>) -> Self {
        match e {
            BodyError::Session(e) => SyncError::Session(e),
            BodyError::Sink(e) => SyncError::Delivery(e),
        }
    }
}

impl SyncError {
    pub fn exit_code(&self) -> ExitCode {
        match self {
            SyncError::Locked { .. } => ExitCode::TempFail,
            SyncError::LockFile { .. } => ExitCode::IoError,
            SyncError::Setup(e) => e.exit_code(),
            SyncError::Session(e) => e.exit_code(),
            SyncError::Store(e) => e.exit_code(),
            SyncError::Filter(e) => e.exit_code(),
            SyncError::Delivery(e) => e.exit_code(),
            SyncError::UidlReset { .. } => ExitCode::Protocol,
            SyncError::UnknownPending { .. } => ExitCode::IoError,
        }
    }
}
