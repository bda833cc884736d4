//! The one harness of the integration tests: `TestEnv` runs the real
//! `popsync` binary in a private temp dir against a Dovecot (`dovecot.rs`),
//! another real server (`servers.rs`, `courier.rs`, `cyrus.rs`) or the
//! scripted fault server (`tests/fault/`), and returns one `Output`
//! (`env.rs`); `mail.rs` makes and reads the mail. This file holds the rules
//! every test follows: `cannot_run` for a test that cannot run here, and
//! `run_rows` for table-driven tests.
//!
//! Each test file says `mod common;` and uses what it needs, so parts of this
//! module are unused in some test binaries; hence the `dead_code` allowance.
//!
//! Typical use:
//! ```ignore
//! let dovecot = common::require_dovecot!();     // or the test fails (see cannot_run)
//! let alice = dovecot.add_user("alice", "secret");
//! alice.deliver(&common::sample_message(1, 10));
//! let env = common::TestEnv::new();
//! let maildir = env.maildir("alice");
//! env.write_accounts(&[common::account_toml("alice", &dovecot, &alice, "implicit", &maildir, "")]);
//! let out = env.run(&["fetch", "--all"]);
//! out.assert_code_with(0, &dovecot);
//! ```
#![allow(dead_code)]

mod dovecot;
mod env;
mod mail;
pub mod servers;
mod spawned;

use std::path::Path;
use std::thread;

// Every test binary uses a different part of the harness.
#[allow(unused_imports)]
pub use dovecot::*;
#[allow(unused_imports)]
pub use env::*;
#[allow(unused_imports)]
pub use mail::*;
#[allow(unused_imports)]
pub use spawned::*;

/// Starts a throwaway Dovecot with `tests/dovecot/start.sh` options (none,
/// or e.g. `"--no-stls"`, `"--apop"`, `"--cert", "expired"`), or, when
/// Dovecot is missing and `POPSYNC_TEST_SKIP_SERVERS=1` asks for it, returns
/// from the calling test after `cannot_run` said "skipped". Otherwise a
/// missing Dovecot fails the test.
#[allow(unused_macros)]
macro_rules! require_dovecot {
    ($($arg:expr),* $(,)?) => {
        match $crate::common::Dovecot::start_with_options(&[$($arg),*]) {
            Some(dovecot) => dovecot,
            None => return,
        }
    };
}
#[allow(unused_imports)]
pub(crate) use require_dovecot;

/// The environment variable that lets a test that cannot run here (a server,
/// a tool or root missing) skip instead of failing: `1` to skip.
pub const SKIP_VAR: &str = "POPSYNC_TEST_SKIP_SERVERS";

/// The one rule for a test that cannot run here because `why` (a server, a
/// tool or root is missing): it fails (a panic naming `why`), unless
/// `POPSYNC_TEST_SKIP_SERVERS=1` asks to skip; then this prints
/// "skipped: WHY" and the caller returns without asserting anything. Under
/// `CI=true` it always fails.
#[track_caller]
pub fn cannot_run(why: &str) {
    if in_ci() {
        panic!("{why}; CI=true, where every test must run (tests/run.sh installs what they need)");
    }
    if std::env::var(SKIP_VAR).as_deref() != Ok("1") {
        panic!(
            "{why}; this test cannot run here. `bash tests/run.sh` installs the servers \
             and tools it needs; set {SKIP_VAR}=1 to skip it instead"
        );
    }
    eprintln!("skipped: {why}");
}

fn manifest_dir() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

pub fn in_ci() -> bool {
    std::env::var("CI").as_deref() == Ok("true")
}

/// Fails unless `haystack` contains `needle`, showing `what` it was.
#[track_caller]
pub fn assert_contains(haystack: &str, needle: &str, what: &str) {
    assert!(
        haystack.contains(needle),
        "{what} should contain {needle:?}; it was:\n{haystack}"
    );
}

/// Like `assert_contains`, ignoring case.
#[track_caller]
pub fn assert_mentions(haystack: &str, needle: &str, what: &str) {
    assert!(
        haystack.to_lowercase().contains(&needle.to_lowercase()),
        "{what} should mention {needle:?}; it was:\n{haystack}"
    );
}

/// Runs every row of a table-driven test, `workers` at a time, each to its
/// end whatever the others do, then fails naming each row that failed (by
/// `name`) with its panic message. A row is a case of its own: it builds
/// its own servers and `TestEnv`.
pub fn run_rows<R: Send>(
    rows: Vec<R>,
    workers: usize,
    name: impl Fn(&R) -> &str + Sync,
    run: impl Fn(&R) + Sync,
) {
    let queue = std::sync::Mutex::new(rows.into_iter());
    let failures = std::sync::Mutex::new(Vec::new());
    thread::scope(|scope| {
        for _ in 0..workers {
            scope.spawn(|| {
                loop {
                    let next = queue.lock().unwrap_or_else(|e| e.into_inner()).next();
                    let Some(row) = next else { break };
                    let result =
                        std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| run(&row)));
                    if let Err(panic) = result {
                        let why = panic
                            .downcast_ref::<String>()
                            .cloned()
                            .or_else(|| panic.downcast_ref::<&str>().map(|s| (*s).to_owned()))
                            .unwrap_or_default();
                        failures
                            .lock()
                            .unwrap_or_else(|e| e.into_inner())
                            .push(format!("row {}: {why}", name(&row)));
                    }
                }
            });
        }
    });
    let failures = failures.into_inner().unwrap_or_else(|e| e.into_inner());
    assert!(
        failures.is_empty(),
        "{} row(s) failed:\n{}",
        failures.len(),
        failures.join("\n\n")
    );
}

pub mod cyrus;

pub mod courier;
