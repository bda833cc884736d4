//! The header filter (`filter = "command"`): before a new message is
//! downloaded, its headers (TOP n 0) go to the command's stdin, with `%F`
//! (envelope sender) and `%S` (size in octets) substituted, and its exit
//! status decides: 0 fetch, 1 delete on the server without downloading,
//! 2 skip for now. 75 is a temporary failure; anything else, a signal or a
//! timeout is a failure for that message (it stays on the server).

use std::time::Duration;

use crate::command::{expand_command, run_shell};
use crate::exit::ExitCode;

/// What the filter decided for one message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Fetch,
    Delete,
    Skip,
}

/// A filter that did not give a verdict.
#[derive(Debug, Clone, thiserror::Error)]
pub enum FilterError {
    #[error("filter `{command}` {problem}")]
    Run { command: String, problem: String },
    #[error(
        "filter `{command}` exited 75 (temporary failure){}",
        stderr_part(stderr)
    )]
    Temporary { command: String, stderr: String },
    #[error(
        "filter `{command}` failed ({status}){}; exit 0 fetches, 1 deletes, 2 skips",
        stderr_part(stderr)
    )]
    Failed {
        command: String,
        status: String,
        stderr: String,
    },
}

fn stderr_part(s: &str) -> String {
    if s.is_empty() {
        String::new()
    } else {
        format!(": {s}")
    }
}

impl FilterError {
    /// DESIGN.md: a filter that fails is 74 for that message; exit 75 is
    /// temporary.
    pub fn exit_code(&self) -> ExitCode {
        match self {
            FilterError::Temporary { .. } => ExitCode::TempFail,
            _ => ExitCode::IoError,
        }
    }
}

/// Ask the filter about one message.
pub fn judge(
    command: &str,
    headers: &[u8],
    sender: &str,
    size: u64,
    timeout: Duration,
) -> Result<Verdict, FilterError> {
    let size = size.to_string();
    let expanded = expand_command(command, &[('F', sender), ('S', &size)]);
    // Blocks for up to `timeout` (children included; see `command`):
    // async callers go through `command::blocking`.
    let finished = run_shell(&expanded, headers, timeout).map_err(|e| FilterError::Run {
        command: command.to_owned(),
        problem: e.to_string(),
    })?;
    match finished.status.code() {
        Some(0) => Ok(Verdict::Fetch),
        Some(1) => Ok(Verdict::Delete),
        Some(2) => Ok(Verdict::Skip),
        Some(75) => Err(FilterError::Temporary {
            command: command.to_owned(),
            stderr: finished.stderr,
        }),
        _ => Err(FilterError::Failed {
            command: command.to_owned(),
            status: finished.status.to_string(),
            stderr: finished.stderr,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const T: Duration = Duration::from_secs(5);
    const HEAD: &[u8] = b"Subject: cheap pills\nFrom: x@y\n\n";

    #[test]
    fn exit_status_is_the_verdict() {
        assert_eq!(
            judge("cat >/dev/null; exit 0", HEAD, "a@b", 1, T).unwrap(),
            Verdict::Fetch
        );
        assert_eq!(
            judge("grep -q pills && exit 1; exit 0", HEAD, "a@b", 1, T).unwrap(),
            Verdict::Delete
        );
        assert_eq!(
            judge("test %S -gt 100 && exit 2; exit 0", HEAD, "a@b", 500, T).unwrap(),
            Verdict::Skip
        );
        assert_eq!(
            judge("test %F = a@b", HEAD, "a@b", 1, T).unwrap(),
            Verdict::Fetch
        );
    }

    #[test]
    fn other_exits_signals_and_hangs_are_errors() {
        let e = judge("exit 75", HEAD, "a", 1, T).unwrap_err();
        assert_eq!(e.exit_code(), ExitCode::TempFail);
        let e = judge("echo broken >&2; exit 9", HEAD, "a", 1, T).unwrap_err();
        assert!(e.to_string().contains("broken"), "{e}");
        assert_eq!(e.exit_code(), ExitCode::IoError);
        assert!(judge("kill -9 $$", HEAD, "a", 1, T).is_err());
        assert!(judge("sleep 20", HEAD, "a", 1, Duration::from_millis(200)).is_err());
    }

    #[test]
    fn a_filter_whose_child_holds_its_output_is_killed_at_the_timeout() {
        let started = std::time::Instant::now();
        let e = judge(
            "cat >/dev/null; sleep 30 & exit 0",
            HEAD,
            "a",
            1,
            Duration::from_millis(500),
        )
        .unwrap_err();
        assert!(e.to_string().contains("command_timeout"), "{e}");
        assert_eq!(e.exit_code(), ExitCode::IoError);
        assert!(started.elapsed() < Duration::from_secs(5));
    }
}
