//! Exit status as data (DESIGN.md "Exit codes", sysexits.h), decided in one place.
//!
//! Every failure in the library maps to one `ExitCode`; `main` only asks for the
//! merged code of a run and exits with it.

/// The process exit codes popsync uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub enum ExitCode {
    /// Every selected account synced; `check`: new mail exists.
    #[default]
    Ok = 0,
    /// `check` only: no new mail.
    NoNewMail = 1,
    /// Usage error.
    Usage = 64,
    /// Config file not found.
    NoInput = 66,
    /// Server unreachable (DNS, refused, network).
    Unavailable = 69,
    /// Internal error (a bug).
    Software = 70,
    /// Local I/O error: delivery target, disk full, seen-store.
    IoError = 74,
    /// Temporary failure: lock held, `[IN-USE]`, `[LOGIN-DELAY]`, `[SYS/TEMP]`, timeout.
    TempFail = 75,
    /// The server broke the protocol.
    Protocol = 76,
    /// Authentication failed or TLS certificate not trusted.
    NoPerm = 77,
    /// Invalid configuration, or a secret that cannot be obtained.
    Config = 78,
    /// Stopped by SIGINT after committing the message in hand.
    Interrupted = 130,
    /// Stopped by SIGTERM after committing the message in hand.
    Terminated = 143,
}

impl ExitCode {
    /// The numeric process status.
    pub fn code(self) -> i32 {
        self as i32
    }

    /// Temporary failures are retried by the next run and merge differently.
    pub fn is_temporary(self) -> bool {
        self == ExitCode::TempFail
    }

    /// The `status` field of `--json`: "ok", "temporary" or "failed".
    pub fn status_word(self) -> &'static str {
        match self {
            ExitCode::Ok | ExitCode::NoNewMail => "ok",
            ExitCode::TempFail => "temporary",
            _ => "failed",
        }
    }
}

/// The rule for several accounts: 0 when all succeeded; 75 only if every failure
/// was temporary; otherwise the first non-temporary failure in config order.
/// `results` must be in config order.
pub fn merge(results: impl IntoIterator<Item = ExitCode>) -> ExitCode {
    let mut any_temporary = false;
    for code in results {
        match code {
            ExitCode::Ok => {}
            c if c.is_temporary() => any_temporary = true,
            c => return c,
        }
    }
    if any_temporary {
        ExitCode::TempFail
    } else {
        ExitCode::Ok
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn all_ok_merges_to_ok() {
        assert_eq!(merge([ExitCode::Ok, ExitCode::Ok]), ExitCode::Ok);
        assert_eq!(merge([]), ExitCode::Ok);
    }

    #[test]
    fn only_temporary_failures_merge_to_75() {
        assert_eq!(
            merge([ExitCode::Ok, ExitCode::TempFail, ExitCode::TempFail]),
            ExitCode::TempFail
        );
    }

    #[test]
    fn first_permanent_failure_in_config_order_wins() {
        assert_eq!(
            merge([
                ExitCode::TempFail,
                ExitCode::NoPerm,
                ExitCode::IoError,
                ExitCode::Ok
            ]),
            ExitCode::NoPerm
        );
    }
}
