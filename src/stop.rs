//! A requested stop (SIGINT, SIGTERM): sessions stop starting new downloads,
//! finish the messages already in flight, commit, DELE and QUIT, and the
//! process exits 130 or 143. A second signal exits at once; the pending
//! records in the seen-store make that safe too.

use std::sync::atomic::{AtomicU8, Ordering};

use crate::exit::ExitCode;

static REQUESTED: AtomicU8 = AtomicU8::new(0);

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

/// Record a stop request; returns true when one was already pending.
fn request(kind: u8) -> bool {
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
