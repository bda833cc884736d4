//! Running a user's shell command (`password_command`, `filter`, an MDA):
//! `/bin/sh -c` in a process group of its own, input on stdin (bytes through
//! a pipe, or a spooled file), bounded capture of what it prints, and one
//! deadline for all of it.
//!
//! `command_timeout` bounds the whole command, children included. A command
//! is done when its shell has exited *and* every process holding its output
//! pipes has closed them: `cat; sleep 30 &` is not done while the sleeper
//! holds stderr. A command that is not done by the deadline has its process
//! group killed, its pipes are no longer read (so even a child that left the
//! group cannot hold us), and it is reported as timed out. A stop request
//! (SIGINT, SIGTERM) moves the deadline to `stop::GRACE` after the signal, so
//! a stop never waits for a command.
//!
//! One thread serves every pipe with poll(2), so a command that prints a lot
//! or never reads its input cannot deadlock us. Everything here blocks the
//! calling thread: async code calls it through `blocking`.

use std::fs::File;
use std::io::{ErrorKind, Read, Write};
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

/// Most bytes kept of a command's stdout and stderr; more is read and dropped.
const MAX_STDOUT: usize = 1 << 20;
const MAX_STDERR: usize = 64 << 10;

/// Longest single wait before the deadline and a stop request are looked at
/// again.
const TICK: Duration = Duration::from_millis(50);

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
    /// `exited`: the command itself had exited, but a process it started
    /// still held its output open.
    #[error("{}", timed_out(*timeout, *exited))]
    TimedOut {
        timeout: Duration,
        exited: Option<ExitStatus>,
    },
    #[error("was killed because popsync was asked to stop")]
    Stopped,
}

fn timed_out(timeout: Duration, exited: Option<ExitStatus>) -> String {
    let secs = timeout.as_secs();
    match exited {
        None => format!(
            "did not finish within {secs}s (command_timeout) and was killed with everything it started"
        ),
        Some(status) => format!(
            "{status}, but a process it started still held its output open after {secs}s (command_timeout); they were killed"
        ),
    }
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

/// Run blocking work (a command, a lock wait, a seen-store that may be busy)
/// from async code without holding up a runtime worker: on the multi-thread
/// runtime through `block_in_place`, so the other accounts' sessions and the
/// signal handler go on meanwhile. On a current-thread runtime (`peek`,
/// `probe`: one session, no signal handler) or outside a runtime it simply
/// runs.
pub fn blocking<R>(work: impl FnOnce() -> R) -> R {
    use tokio::runtime::{Handle, RuntimeFlavor};
    match Handle::try_current() {
        Ok(h) if h.runtime_flavor() == RuntimeFlavor::MultiThread => {
            tokio::task::block_in_place(work)
        }
        _ => work(),
    }
}

/// Run `/bin/sh -c command` with `input` on stdin (none when empty); its
/// stdout and stderr are captured.
pub fn run_shell(command: &str, input: &[u8], timeout: Duration) -> Result<Finished, RunError> {
    run_shell_with_env(command, input, &[], timeout)
}

/// `run_shell` with extra environment variables.
pub fn run_shell_with_env(
    command: &str,
    input: &[u8],
    env: &[(&str, String)],
    timeout: Duration,
) -> Result<Finished, RunError> {
    let stdin = if input.is_empty() {
        Input::Null
    } else {
        Input::Bytes(input)
    };
    run(command, stdin, env, true, timeout)
}

/// Run `/bin/sh -c command` with `file` (read from its current offset) as
/// its stdin: the command only ever sees what the file holds, even if we are
/// killed meanwhile. Its stdout goes to /dev/null; stderr is captured.
pub fn run_shell_on_file(
    command: &str,
    file: File,
    timeout: Duration,
) -> Result<Finished, RunError> {
    run(command, Input::File(file), &[], false, timeout)
}

enum Input<'a> {
    Null,
    Bytes(&'a [u8]),
    File(File),
}

/// The moment a command must be done by: its timeout, or the end of the
/// grace a stop request leaves, whichever is first; and whether it is the
/// stop.
fn deadline(started: Instant, timeout: Duration) -> (Instant, bool) {
    let own = started
        .checked_add(timeout)
        .unwrap_or(started + Duration::from_secs(365 * 86400));
    match crate::stop::command_deadline() {
        Some(stop) if stop < own => (stop, true),
        _ => (own, false),
    }
}

fn run(
    command: &str,
    input: Input<'_>,
    env: &[(&str, String)],
    capture_stdout: bool,
    timeout: Duration,
) -> Result<Finished, RunError> {
    let started = Instant::now();
    if let (until, true) = deadline(started, timeout)
        && until <= started
    {
        // Stopping, and the grace is over: start nothing new.
        return Err(RunError::Stopped);
    }
    let mut cmd = Command::new("/bin/sh");
    cmd.arg("-c").arg(command).process_group(0);
    cmd.envs(env.iter().map(|(k, v)| (k, v)));
    let bytes = match input {
        Input::Null => {
            cmd.stdin(Stdio::null());
            &[][..]
        }
        Input::Bytes(b) => {
            cmd.stdin(Stdio::piped());
            b
        }
        Input::File(f) => {
            cmd.stdin(Stdio::from(f));
            &[][..]
        }
    };
    cmd.stdout(if capture_stdout {
        Stdio::piped()
    } else {
        Stdio::null()
    })
    .stderr(Stdio::piped());
    let mut child = cmd.spawn().map_err(RunError::Spawn)?;
    // Dropping cmd closes our copy of a stdin file.
    drop(cmd);
    let mut pipes = Pipes {
        stdin: child.stdin.take().map(|p| File::from(OwnedFd::from(p))),
        input: bytes,
        stdout: Drain::new(child.stdout.take().map(OwnedFd::from), MAX_STDOUT),
        stderr: Drain::new(child.stderr.take().map(OwnedFd::from), MAX_STDERR),
    };
    match supervise(&mut child, &mut pipes, started, timeout) {
        Ok(status) => Ok(Finished {
            status,
            stdout: pipes.stdout.buf,
            stderr: crate::sanitize::sanitize(
                String::from_utf8_lossy(&pipes.stderr.buf).trim().as_bytes(),
                500,
            ),
        }),
        Err(e) => {
            kill_group(&mut child);
            Err(e)
        }
    }
}

/// Our ends of a running command's pipes.
struct Pipes<'a> {
    stdin: Option<File>,
    input: &'a [u8],
    stdout: Drain,
    stderr: Drain,
}

/// An output pipe read until its end; the first `limit` bytes are kept.
struct Drain {
    pipe: Option<File>,
    buf: Vec<u8>,
    limit: usize,
}

impl Drain {
    fn new(fd: Option<OwnedFd>, limit: usize) -> Drain {
        let pipe = fd.map(File::from);
        if let Some(p) = &pipe {
            set_nonblocking(p);
        }
        Drain {
            pipe,
            buf: Vec::new(),
            limit,
        }
    }

    /// Read what is there; closes the pipe at its end.
    fn read(&mut self) {
        let Some(pipe) = self.pipe.as_mut() else {
            return;
        };
        let mut chunk = [0u8; 16 << 10];
        match pipe.read(&mut chunk) {
            Ok(0) => self.pipe = None,
            Ok(n) => {
                let keep = n.min(self.limit.saturating_sub(self.buf.len()));
                self.buf.extend_from_slice(&chunk[..keep]);
            }
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::Interrupted) => {}
            Err(_) => self.pipe = None,
        }
    }
}

/// Feed the input, drain the output, and wait for the command and every
/// holder of its output pipes, until the deadline.
fn supervise(
    child: &mut Child,
    pipes: &mut Pipes<'_>,
    started: Instant,
    timeout: Duration,
) -> Result<ExitStatus, RunError> {
    if let Some(p) = &pipes.stdin {
        set_nonblocking(p);
    }
    let mut status = None;
    // How long to sleep when no pipe is left to wait on: short at first, so
    // a quick command costs little, then up to TICK.
    let mut nap = Duration::from_millis(1);
    loop {
        if status.is_none() {
            status = child.try_wait().map_err(RunError::Spawn)?;
            // A command that exits without reading all of its input is
            // fine: its exit status is what counts.
            if status.is_some() {
                pipes.stdin = None;
            }
        }
        if let Some(s) = status
            && pipes.stdout.pipe.is_none()
            && pipes.stderr.pipe.is_none()
        {
            return Ok(s);
        }
        let (until, stopping) = deadline(started, timeout);
        let now = Instant::now();
        if now >= until {
            return Err(if stopping {
                RunError::Stopped
            } else {
                RunError::TimedOut {
                    timeout,
                    exited: status,
                }
            });
        }
        let wait = (until - now).min(TICK);
        let mut fds = Vec::with_capacity(3);
        for (file, events) in [
            (pipes.stdin.as_ref(), libc::POLLOUT),
            (pipes.stdout.pipe.as_ref(), libc::POLLIN),
            (pipes.stderr.pipe.as_ref(), libc::POLLIN),
        ] {
            fds.push(libc::pollfd {
                fd: file.map_or(-1, |f| f.as_raw_fd()),
                events,
                revents: 0,
            });
        }
        if fds.iter().all(|f| f.fd < 0) {
            // Only the exit is left to wait for.
            std::thread::sleep(nap.min(wait));
            nap = (nap * 2).min(TICK);
            continue;
        }
        let ms = libc::c_int::try_from(wait.as_millis().max(1)).unwrap_or(50);
        // SAFETY: fds is a valid array of fds.len() pollfd structs; a
        // negative fd is ignored by poll(2).
        let ready = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, ms) };
        if ready <= 0 {
            // Timeout, or EINTR: look at the clock and the child again.
            continue;
        }
        if fds[0].revents != 0 {
            pipes.feed();
        }
        if fds[1].revents != 0 {
            pipes.stdout.read();
        }
        if fds[2].revents != 0 {
            pipes.stderr.read();
        }
    }
}

impl Pipes<'_> {
    /// Write what the pipe takes; close it when all is written or the
    /// command closed its end.
    fn feed(&mut self) {
        let Some(pipe) = self.stdin.as_mut() else {
            return;
        };
        match pipe.write(self.input) {
            Ok(n) => self.input = &self.input[n..],
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::Interrupted) => {}
            Err(_) => self.input = &[],
        }
        if self.input.is_empty() {
            self.stdin = None;
        }
    }
}

fn set_nonblocking(file: &File) {
    let fd = file.as_raw_fd();
    // SAFETY: fcntl on a descriptor we own; F_GETFL/F_SETFL touch only its
    // status flags. Should it fail, the pipe stays blocking, and poll(2)
    // readiness still makes the next read or (small) write return.
    unsafe {
        let flags = libc::fcntl(fd, libc::F_GETFL);
        if flags >= 0 {
            libc::fcntl(fd, libc::F_SETFL, flags | libc::O_NONBLOCK);
        }
    }
}

/// Kill a command and everything in its process group.
fn kill_group(child: &mut Child) {
    if let Ok(pid) = i32::try_from(child.id()) {
        // SAFETY: kill(2) with a negative pid signals the process group the
        // child leads (it was started with process_group(0)). The group id
        // cannot be reused while any member of the group lives.
        unsafe {
            libc::kill(-pid, libc::SIGKILL);
        }
    }
    let _ = child.kill();
    let _ = child.wait();
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
    fn big_input_and_output_flow_at_once_and_output_is_capped() {
        let input = vec![b'y'; 3 << 20];
        let f = run_shell("cat; cat /dev/null >&2", &input, Duration::from_secs(10)).unwrap();
        assert!(f.status.success());
        assert_eq!(
            f.stdout.len(),
            MAX_STDOUT,
            "kept up to the cap, rest drained"
        );
    }

    #[test]
    fn a_file_is_the_stdin_of_run_shell_on_file() {
        let mut file = tempfile::tempfile().unwrap();
        file.write_all(b"whole message\n").unwrap();
        std::io::Seek::rewind(&mut file).unwrap();
        let f = run_shell_on_file(
            "test -f /dev/stdin && cat >&2",
            file,
            Duration::from_secs(5),
        )
        .unwrap();
        assert!(f.status.success(), "{f:?}");
        assert_eq!(f.stderr, "whole message");
    }

    fn is_alive(pid: i32) -> bool {
        // Dead means gone or a zombie (an orphan waits for PID 1 to reap it).
        let state = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        state
            .split(") ")
            .nth(1)
            .is_some_and(|rest| !rest.starts_with('Z'))
    }

    fn pid_in(path: &std::path::Path) -> i32 {
        std::fs::read_to_string(path)
            .unwrap()
            .trim()
            .parse()
            .unwrap()
    }

    #[test]
    fn a_hanging_command_is_killed_with_everything_it_started() {
        let dir = tempfile::tempdir().unwrap();
        let pidfile = dir.path().join("pid");
        let cmd = format!("sleep 30 & echo $! > {}; wait", pidfile.display());
        let e = run_shell(&cmd, b"", Duration::from_millis(300)).unwrap_err();
        assert!(matches!(e, RunError::TimedOut { exited: None, .. }));
        let pid = pid_in(&pidfile);
        std::thread::sleep(Duration::from_millis(100));
        assert!(
            !is_alive(pid),
            "the shell's child {pid} survived the timeout"
        );
    }

    #[test]
    fn a_child_left_holding_the_output_pipes_is_bounded_by_the_timeout() {
        // The shell exits 0 at once; its child keeps stdout and stderr open.
        let dir = tempfile::tempdir().unwrap();
        let pidfile = dir.path().join("pid");
        let cmd = format!(
            "echo out; sleep 30 & echo $! > {}; exit 0",
            pidfile.display()
        );
        let started = Instant::now();
        let e = run_shell(&cmd, b"", Duration::from_millis(500)).unwrap_err();
        let took = started.elapsed();
        assert!(
            matches!(e, RunError::TimedOut { exited: Some(s), .. } if s.success()),
            "{e}"
        );
        assert!(e.to_string().contains("still held its output open"), "{e}");
        assert!(took < Duration::from_secs(5), "took {took:?}");
        std::thread::sleep(Duration::from_millis(100));
        let pid = pid_in(&pidfile);
        assert!(!is_alive(pid), "the sleeper {pid} survived the timeout");
    }

    #[test]
    fn a_child_that_closed_the_pipes_does_not_hold_the_command() {
        let f = run_shell(
            "echo ok; sleep 30 >/dev/null 2>&1 &",
            b"",
            Duration::from_secs(10),
        )
        .unwrap();
        assert_eq!(f.stdout, b"ok\n");
    }

    #[test]
    fn blocking_runs_on_either_runtime_flavor_and_outside_one() {
        assert_eq!(blocking(|| 1), 1);
        let multi = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .build()
            .unwrap();
        assert_eq!(multi.block_on(async { blocking(|| 2) }), 2);
        assert_eq!(
            multi
                .block_on(async { tokio::spawn(async { blocking(|| 3) }).await })
                .unwrap(),
            3
        );
        let single = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        assert_eq!(single.block_on(async { blocking(|| 4) }), 4);
    }
}
