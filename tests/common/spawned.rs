//! The real binary started in the background, for the tests that kill it
//! or watch it while it runs (crash, IMAP and command-bound tests). Its
//! output goes to files in the test directory, so that a full pipe never
//! blocks it.

use std::fs;
use std::process::Child;
use std::time::{Duration, Instant};

use super::TestEnv;

/// `popsync --config CONFIG ARGS` with `envs` set, in the background; its
/// stdout and stderr go to `NAME.stdout` and `NAME.stderr` in `env`.
pub fn spawn_logged(env: &TestEnv, args: &[&str], envs: &[(&str, &str)], name: &str) -> Child {
    let stdout = fs::File::create(env.path().join(format!("{name}.stdout"))).expect("stdout file");
    let stderr = fs::File::create(env.path().join(format!("{name}.stderr"))).expect("stderr file");
    env.command()
        .arg("--config")
        .arg(env.config_path())
        .args(args)
        .envs(envs.iter().copied())
        .stdout(stdout)
        .stderr(stderr)
        .spawn()
        .expect("spawn popsync")
}

/// What a spawned run wrote to stderr.
pub fn spawned_stderr(env: &TestEnv, name: &str) -> String {
    fs::read_to_string(env.path().join(format!("{name}.stderr"))).unwrap_or_default()
}

/// Polls `condition` every millisecond until it holds or `child` exits or
/// `limit` passes. True when the condition held while the child still ran.
pub fn wait_while_running(
    child: &mut Child,
    limit: Duration,
    mut condition: impl FnMut() -> bool,
) -> bool {
    let deadline = Instant::now() + limit;
    loop {
        if condition() {
            return child.try_wait().expect("try_wait").is_none();
        }
        if child.try_wait().expect("try_wait").is_some() || Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// SIGKILLs `child` (if it still runs) and reaps it. True if it was still
/// running, i.e. the kill interrupted it.
pub fn kill9(child: &mut Child) -> bool {
    let running = child.try_wait().expect("try_wait").is_none();
    if running {
        // Child::kill sends SIGKILL on Unix.
        let _ = child.kill();
    }
    let _ = child.wait();
    running
}
