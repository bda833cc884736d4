//! What popsync tells the person or the log: one place that decides, by `-q`,
//! `-v`, `-vv` and `--json`, which lines reach stderr (DESIGN.md "Streams").
//! Requested output (JSON, plans) goes to stdout through `stdout_line`.

use std::io::{IsTerminal, Write};
use std::sync::OnceLock;

use indicatif::{MultiProgress, ProgressBar, ProgressStyle};

/// The progress display, when there is one: stderr is a terminal and neither
/// `-q` nor `--json` was given. Every stderr line goes through it then, so
/// lines and bars never overwrite each other.
static PROGRESS: OnceLock<MultiProgress> = OnceLock::new();

/// Write one line to stderr, above the progress bars if they are shown.
pub fn stderr_line(line: &str) {
    match PROGRESS.get() {
        Some(mp) => {
            if mp.println(line).is_err() {
                eprintln!("{line}");
            }
        }
        None => eprintln!("{line}"),
    }
}

/// How much to say on stderr.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Verbosity {
    /// `-q`: errors only.
    Quiet,
    /// One summary line per account.
    Normal,
    /// `-v`: one line per message too.
    Verbose,
    /// `-vv`: the protocol dialogue too (redacted).
    Trace,
}

/// Shared by every account's task; each call writes whole lines.
#[derive(Debug, Clone, Copy)]
pub struct Ui {
    pub verbosity: Verbosity,
    pub json: bool,
}

impl Ui {
    /// Summaries and notices (not with `-q`).
    pub fn info(&self, line: &str) {
        if self.verbosity >= Verbosity::Normal {
            stderr_line(line);
        }
    }

    /// Warnings: something the user should fix, but the run went on.
    pub fn warn(&self, line: &str) {
        if self.verbosity >= Verbosity::Normal {
            stderr_line(&format!("popsync: warning: {line}"));
        }
    }

    /// Per-message lines (`-v`).
    pub fn verbose(&self, line: &str) {
        if self.verbosity >= Verbosity::Verbose {
            stderr_line(line);
        }
    }

    /// Turn progress bars on if they belong here: stderr is a terminal, and
    /// neither `-q` nor `--json` asked for quiet or machine output.
    pub fn enable_progress(&self) {
        if self.verbosity >= Verbosity::Normal && !self.json && std::io::stderr().is_terminal() {
            let _ = PROGRESS.set(MultiProgress::new());
        }
    }

    /// A progress bar for one account's downloads (bytes, with messages in
    /// its message), or None when bars are off.
    pub fn account_bar(&self, account: &str, messages: usize, bytes: u64) -> Option<ProgressBar> {
        let mp = PROGRESS.get()?;
        let style = ProgressStyle::with_template(
            "{prefix:>12.bold} [{bar:25}] {bytes:>10}/{total_bytes:<10} {bytes_per_sec:>12} {msg}",
        )
        .ok()?
        .progress_chars("=> ");
        let bar = mp.add(ProgressBar::new(bytes).with_style(style));
        bar.set_prefix(account.to_owned());
        bar.set_message(format!("0/{messages} messages"));
        Some(bar)
    }

    pub fn tracing(&self) -> bool {
        self.verbosity >= Verbosity::Trace
    }

    /// Errors are always shown, `-q` included.
    pub fn error(&self, line: &str) {
        stderr_line(&format!("popsync: {line}"));
    }
}

/// Write a line of requested output to stdout. A closed pipe (`| head`) is
/// not an error worth reporting: the reader has what it wanted.
pub fn stdout_line(line: &str) -> std::io::Result<()> {
    let mut out = std::io::stdout().lock();
    match writeln!(out, "{line}").and_then(|_| out.flush()) {
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
        other => other,
    }
}

/// Octets as a short human figure for summaries ("12.3 KB").
pub fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 4] = ["KB", "MB", "GB", "TB"];
    if n < 1000 {
        return format!("{n} bytes");
    }
    let mut v = n as f64;
    let mut unit = "bytes";
    for u in UNITS {
        if v < 1000.0 {
            break;
        }
        v /= 1000.0;
        unit = u;
    }
    format!("{v:.1} {unit}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn human_bytes_uses_decimal_units() {
        assert_eq!(human_bytes(999), "999 bytes");
        assert_eq!(human_bytes(12_345), "12.3 KB");
        assert_eq!(human_bytes(5_000_000), "5.0 MB");
    }
}
