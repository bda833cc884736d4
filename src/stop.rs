//! A requested stop (SIGINT, SIGTERM): sessions stop starting new downloads,
//! finish the messages already in flight, commit, DELE and QUIT, and the
//! process exits 130 or 143. A second signal exits at once; the pending
//! records in the seen-store make that safe too (and an MDA reads a spooled
//! file, so it never sees a truncated message).
//!
//! A user's command (MDA, filter, `password_command`) that is running when
//! the stop comes gets `GRACE` to finish; then `command` kills it and the
//! message in hand is left on the server. So a stop takes a few seconds at
//! most, whatever the command or its children do.

use std::sync::OnceLock;
use std::sync::atomic::{AtomicU8, Ordering};
use std::time::{Duration, Instant};

use crate::exit::ExitCode;

static REQUESTED: AtomicU8 = AtomicU8::new(0);
static REQUESTED_AT: OnceLock<Instant> = OnceLock::new();

/// How long after a stop request a running command may still take.
pub const GRACE: Duration = Duration::from_secs(3);

const INT: u8 = 1;
const TERM: u8 = 2;

/// The stop asked for, if any.
pub fn requested() -> Option<ExitCode> {
    match REQUESTED.load(Ordering::SeqCst) {
        INT => Some(ExitCode::Interrupted),
        TERM => Some(ExitCode::Terminated),
        _ => None,
    }
}

/// When a command that runs now must be done by, because of a stop request.
pub fn command_deadline() -> Option<Instant> {
    REQUESTED_AT.get().map(|at| *at + GRACE)
}

/// Record a stop request; returns true when one was already pending.
fn request(kind: u8) -> bool {
    // The time first, so that whoever sees the request also sees its time.
    REQUESTED_AT.get_or_init(Instant::now);
    REQUESTED
        .compare_exchange(0, kind, Ordering::SeqCst, Ordering::SeqCst)
        .is_err()
}

/// Listen for SIGINT and SIGTERM on the current runtime. Must be called from
/// within a tokio runtime.
pub fn install(on_first: impl Fn(ExitCode) + Send + Sync + 'static) -> std::io::Result<()> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut int = signal(SignalKind::interrupt())?;
    let mut term = signal(SignalKind::terminate())?;
    tokio::spawn(async move {
        loop {
            let kind = tokio::select! {
                Some(()) = int.recv() => INT,
                Some(()) = term.recv() => TERM,
                else => return,
            };
            let code = if kind == INT {
                ExitCode::Interrupted
            } else {
                ExitCode::Terminated
            };
            if request(kind) {
                std::process::exit(code.code());
            }
            on_first(code);
        }
    });
    Ok(())
}
