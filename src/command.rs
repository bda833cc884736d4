//! Running a user's shell command (`password_command`, `filter`) with input on
//! stdin, a time limit, and bounded capture of what it prints.
//!
//! Both pipes are served by threads so a command that prints a lot, or does
//! not read its input, cannot deadlock us; on timeout it is killed.

use std::io::{Read, Write};
use std::os::unix::process::CommandExt;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

/// Most bytes kept of a command's stdout and stderr.
const MAX_STDOUT: u64 = 1 << 20;
const MAX_STDERR: u64 = 64 << 10;

/// What a finished command did.
#[derive(Debug)]
pub struct Finished {
    pub status: ExitStatus,
    pub stdout: Vec<u8>,
    pub stderr: String,
}

/// Why a command did not finish.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error("could not be started: {0}")]
    Spawn(std::io::Error),
    #[error("did not finish within {}s and was killed", .0.as_secs())]
    TimedOut(Duration),
}

/// Quote for `/bin/sh`: inside single quotes nothing is special but `'`.
pub fn shell_quote(s: &str) -> String {
    let clean: String = s.chars().filter(|c| !c.is_control()).collect();
    format!("'{}'", clean.replace('\'', "'\\''"))
}

/// Replace `%X` placeholders (`%F` sender, `%T` user, `%S` size, ...) in a
/// user's command with shell-quoted values; `%%` is a `%`.
pub fn expand_command(command: &str, values: &[(char, &str)]) -> String {
    let mut out = String::with_capacity(command.len() + 32);
    let mut chars = command.chars().peekable();
    while let Some(c) = chars.next() {
        if c != '%' {
            out.push(c);
            continue;
        }
        let next = chars.peek().copied();
        if next == Some('%') {
            chars.next();
            out.push('%');
        } else if let Some((_, v)) = values.iter().find(|(k, _)| Some(*k) == next) {
            chars.next();
            out.push_str(&shell_quote(v));
        } else {
            out.push('%');
        }
    }
    out
}

/// A `/bin/sh -c command` in a process group of its own, so that on a
/// timeout everything it started can be killed, not only the shell.
pub fn shell(command: &str) -> Command {
    let mut cmd = Command::new("/bin/sh");
    cmd.arg("-c").arg(command).process_group(0);
    cmd
}

/// Kill a child started by `shell` and everything in its process group.
pub fn kill_group(child: &mut Child) {
    if let Ok(pid) = i32::try_from(child.id()) {
        // SAFETY: kill(2) with a negative pid signals the process group the
        // child leads (it was started with process_group(0)).
        unsafe {
            libc::kill(-pid, libc::SIGKILL);
        }
    }
    let _ = child.kill();
    let _ = child.wait();
}

/// Run `/bin/sh -c command` with `input` on stdin.
pub fn run_shell(command: &str, input: &[u8], timeout: Duration) -> Result<Finished, RunError> {
    let mut child = shell(command)
        .stdin(if input.is_empty() {
            Stdio::null()
        } else {
            Stdio::piped()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(RunError::Spawn)?;
    let stdin = child.stdin.take();
    let data = input.to_vec();
    let writer = std::thread::spawn(move || {
        if let Some(mut pipe) = stdin {
            // A command that exits without reading all of its input is fine:
            // its exit status is what counts.
            let _ = pipe.write_all(&data);
        }
    });
    let reader = |pipe: Option<Box<dyn Read + Send>>, limit: u64| {
        std::thread::spawn(move || {
            let mut buf = Vec::new();
            if let Some(p) = pipe {
                let _ = p.take(limit).read_to_end(&mut buf);
            }
            buf
        })
    };
    let out = reader(
        child
            .stdout
            .take()
            .map(|p| Box::new(p) as Box<dyn Read + Send>),
        MAX_STDOUT,
    );
    let err = reader(
        child
            .stderr
            .take()
            .map(|p| Box::new(p) as Box<dyn Read + Send>),
        MAX_STDERR,
    );
    let started = Instant::now();
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break status,
            Ok(None) if started.elapsed() >= timeout => {
                kill_group(&mut child);
                return Err(RunError::TimedOut(timeout));
            }
            Ok(None) => std::thread::sleep(Duration::from_millis(5)),
            Err(e) => return Err(RunError::Spawn(e)),
        }
    };
    let _ = writer.join();
    let stdout = out.join().unwrap_or_default();
    let stderr = err.join().unwrap_or_default();
    let stderr =
        crate::pop3::codec::sanitize(String::from_utf8_lossy(&stderr).trim().as_bytes(), 500);
    Ok(Finished {
        status,
        stdout,
        stderr,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn placeholders_are_shell_quoted() {
        let v = [('F', "a'b@c"), ('T', "me"), ('S', "42")];
        assert_eq!(
            expand_command("deliver -f %F -d %T %S 100%% %Q", &v),
            "deliver -f 'a'\\''b@c' -d 'me' '42' 100% %Q"
        );
        assert_eq!(
            expand_command("x %F", &[('F', "$(rm -rf /)")]),
            "x '$(rm -rf /)'"
        );
    }

    #[test]
    fn input_reaches_stdin_and_output_is_captured() {
        let f = run_shell(
            "tr a-z A-Z; echo oops >&2; exit 2",
            b"hello\n",
            Duration::from_secs(5),
        )
        .unwrap();
        assert_eq!(f.stdout, b"HELLO\n");
        assert_eq!(f.stderr, "oops");
        assert_eq!(f.status.code(), Some(2));
    }

    #[test]
    fn a_command_that_ignores_big_input_does_not_deadlock() {
        let f = run_shell("exit 0", &vec![b'x'; 4 << 20], Duration::from_secs(5)).unwrap();
        assert!(f.status.success());
    }

    #[test]
    fn a_hanging_command_is_killed_with_everything_it_started() {
        let dir = tempfile::tempdir().unwrap();
        let pidfile = dir.path().join("pid");
        let cmd = format!("sleep 30 & echo $! > {}; wait", pidfile.display());
        let e = run_shell(&cmd, b"", Duration::from_millis(300)).unwrap_err();
        assert!(matches!(e, RunError::TimedOut(_)));
        let pid: i32 = std::fs::read_to_string(&pidfile)
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        std::thread::sleep(Duration::from_millis(100));
        // Dead means gone or a zombie (an orphan waits for PID 1 to reap it).
        let state = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        let alive = state
            .split(") ")
            .nth(1)
            .is_some_and(|rest| !rest.starts_with('Z'));
        assert!(
            !alive,
            "the shell's child {pid} survived the timeout: {state}"
        );
    }
}
