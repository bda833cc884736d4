//! Where an account's password (or OAuth token) comes from, and getting it.
//!
//! Secrets are fetched only when a session needs them, so `accounts` and
//! `--dry-run` planning never run a user's password command needlessly.

use std::path::PathBuf;
use std::time::Duration;

/// One of `password`, `password_file` (first line) or `password_command`
/// (first line of its stdout).
#[derive(Clone, PartialEq, Eq)]
pub enum SecretSource {
    Password(String),
    File(PathBuf),
    Command(String),
}

impl std::fmt::Debug for SecretSource {
    // Never print the password itself, not even in debug output.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SecretSource::Password(_) => f.write_str("Password(<hidden>)"),
            SecretSource::File(p) => write!(f, "File({})", p.display()),
            SecretSource::Command(c) => write!(f, "Command({c:?})"),
        }
    }
}

/// A secret that could not be obtained (exit 78).
#[derive(Debug, thiserror::Error)]
pub enum SecretError {
    #[error("cannot read password_file {}: {source}", path.display())]
    File {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("password_file {} is empty", path.display())]
    EmptyFile { path: PathBuf },
    #[error(
        "password_file {} {}; {}",
        path.display(), exposure.problem(), exposure.fix(path)
    )]
    UnsafeFile {
        path: PathBuf,
        exposure: super::Exposure,
    },
    #[error("password_command `{command}` could not be started: {source}")]
    Spawn {
        command: String,
        source: std::io::Error,
    },
    #[error(
        "password_command `{command}` failed ({status}){}",
        stderr_part(stderr)
    )]
    Failed {
        command: String,
        status: String,
        stderr: String,
    },
    #[error(
        "the password from {source_name} contains a CR, LF or NUL character; refusing to send it (it could smuggle POP3 commands)"
    )]
    UnsafeCharacters { source_name: String },
    #[error("password_command `{command}` printed nothing on stdout")]
    EmptyOutput { command: String },
    #[error(
        "password_command `{command}` did not finish within {}s (command_timeout) and was killed with everything it started",
        timeout.as_secs()
    )]
    TimedOut { command: String, timeout: Duration },
    #[error("password_command `{command}` was killed because popsync was asked to stop")]
    Stopped { command: String },
}

fn stderr_part(s: &str) -> String {
    if s.is_empty() {
        String::new()
    } else {
        format!(": {s}")
    }
}

impl SecretSource {
    /// The secret, first line only, without its line end. A secret holding
    /// CR, LF or NUL is refused here, before any mechanism encodes it (base64
    /// would hide them from the check on the wire).
    ///
    /// Blocks (a file read, or `password_command` for up to `timeout`,
    /// children included): async callers go through `command::blocking`.
    pub fn resolve(&self, timeout: Duration) -> Result<String, SecretError> {
        let secret = self.fetch(timeout)?;
        if secret.contains(['\r', '\n', '\0']) {
            return Err(SecretError::UnsafeCharacters {
                source_name: match self {
                    SecretSource::Password(_) => "password".to_owned(),
                    SecretSource::File(p) => format!("password_file {}", p.display()),
                    SecretSource::Command(c) => format!("password_command `{c}`"),
                },
            });
        }
        Ok(secret)
    }

    fn fetch(&self, timeout: Duration) -> Result<String, SecretError> {
        match self {
            SecretSource::Password(p) => Ok(p.clone()),
            SecretSource::File(path) => {
                let text = read_private(path)?;
                first_line(&text).ok_or_else(|| SecretError::EmptyFile { path: path.clone() })
            }
            SecretSource::Command(command) => run_command(command, timeout),
        }
    }
}

/// A password file's text, if nobody else can read or change it and it
/// is ours (or root's), checked on the file read.
fn read_private(path: &std::path::Path) -> Result<String, SecretError> {
    use std::io::Read;
    let error = |source| SecretError::File {
        path: path.to_owned(),
        source,
    };
    let mut file = std::fs::File::open(path).map_err(error)?;
    let meta = file.metadata().map_err(error)?;
    if let Some(exposure) = super::permissions::exposure_of(&meta, true) {
        return Err(SecretError::UnsafeFile {
            path: path.to_owned(),
            exposure,
        });
    }
    let mut text = String::new();
    file.read_to_string(&mut text).map_err(error)?;
    Ok(text)
}

fn first_line(text: &str) -> Option<String> {
    let line = text.lines().next()?.trim_end_matches('\r');
    (!line.is_empty()).then(|| line.to_owned())
}

fn run_command(command: &str, timeout: Duration) -> Result<String, SecretError> {
    let finished = crate::command::run_shell(command, b"", timeout).map_err(|e| match e {
        crate::command::RunError::Spawn(source) => SecretError::Spawn {
            command: command.to_owned(),
            source,
        },
        crate::command::RunError::TimedOut { timeout, .. } => SecretError::TimedOut {
            command: command.to_owned(),
            timeout,
        },
        crate::command::RunError::Stopped => SecretError::Stopped {
            command: command.to_owned(),
        },
    })?;
    if !finished.status.success() {
        return Err(SecretError::Failed {
            command: command.to_owned(),
            status: finished.status.to_string(),
            stderr: finished.stderr,
        });
    }
    first_line(&String::from_utf8_lossy(&finished.stdout)).ok_or_else(|| SecretError::EmptyOutput {
        command: command.to_owned(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const T: Duration = Duration::from_secs(5);

    #[test]
    fn command_output_first_line_is_the_secret() {
        let s = SecretSource::Command("printf 'tok\\nsecond\\n'".into());
        assert_eq!(s.resolve(T).unwrap(), "tok");
    }

    #[test]
    fn failing_command_is_an_error_naming_it_with_its_stderr() {
        let s = SecretSource::Command("echo nope >&2; exit 3".into());
        let e = s.resolve(T).unwrap_err().to_string();
        assert!(
            e.contains("echo nope") && e.contains("nope") && e.contains('3'),
            "{e}"
        );
    }

    #[test]
    fn empty_command_output_is_an_error() {
        let e = SecretSource::Command("true".into()).resolve(T).unwrap_err();
        assert!(matches!(e, SecretError::EmptyOutput { .. }));
    }

    #[test]
    fn hanging_command_is_killed_after_the_timeout() {
        let e = SecretSource::Command("sleep 30".into())
            .resolve(Duration::from_millis(200))
            .unwrap_err();
        assert!(matches!(e, SecretError::TimedOut { .. }));
    }

    #[test]
    fn a_command_whose_child_holds_stdout_is_killed_after_the_timeout() {
        // It printed a password and exited 0, but its child still holds
        // stdout: the command is not done, and the timeout bounds it.
        let started = std::time::Instant::now();
        let e = SecretSource::Command("echo tok; sleep 30 & exit 0".into())
            .resolve(Duration::from_millis(500))
            .unwrap_err();
        assert!(matches!(e, SecretError::TimedOut { .. }), "{e}");
        assert!(started.elapsed() < Duration::from_secs(5));
    }

    #[test]
    fn password_file_first_line() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("pw");
        std::fs::write(&p, "secret\r\nignored\n").unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600)).unwrap();
        assert_eq!(SecretSource::File(p).resolve(T).unwrap(), "secret");
    }

    /// Issue 14 item 15: a password file others may read is refused, naming
    /// it and saying what to do.
    #[test]
    fn a_password_file_others_can_read_is_refused() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("pw");
        std::fs::write(&p, "secret\n").unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o644)).unwrap();
        let e = SecretSource::File(p.clone()).resolve(T).unwrap_err();
        assert!(matches!(e, SecretError::UnsafeFile { .. }), "{e}");
        let e = e.to_string();
        assert!(
            e.contains(&p.display().to_string()) && e.contains("chmod 600"),
            "{e}"
        );
    }

    #[test]
    fn a_password_with_cr_lf_or_nul_is_refused() {
        for bad in ["a\r\nDELE 1", "a\nb", "a\0b"] {
            let e = SecretSource::Password(bad.into()).resolve(T).unwrap_err();
            assert!(
                matches!(e, SecretError::UnsafeCharacters { .. }),
                "{bad:?}: {e}"
            );
        }
    }

    #[test]
    fn debug_output_hides_the_password() {
        assert!(!format!("{:?}", SecretSource::Password("hunter2".into())).contains("hunter2"));
    }
}
