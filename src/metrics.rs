//! `fetch --metrics FILE`: a Prometheus textfile for node_exporter's textfile
//! collector, so that an account that has not synced for a day can raise an
//! alert. Per account: when the last run and the last successful run ended,
//! what the last run fetched, its exit code, and counters of messages, bytes
//! and failed runs by class ("temporary", "failed"). The counters and the
//! last success carry over from the file's previous contents, and accounts
//! not in this run keep their lines; the file is replaced atomically.

use std::collections::BTreeMap;
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use chrono::{DateTime, Utc};

use crate::report::AccountReport;

/// Why the metrics file could not be written.
#[derive(Debug, thiserror::Error)]
#[error("cannot write the metrics file {}: {source}", path.display())]
pub struct MetricsError {
    pub path: PathBuf,
    pub source: std::io::Error,
}

/// One sample: metric name and its labels (account first), then the value.
type Key = (String, Vec<(String, String)>);

/// The samples of a textfile popsync wrote, keyed by name and labels.
/// Lines it did not write (comments, anything unparsable) are dropped.
fn read_samples(text: &str) -> BTreeMap<Key, f64> {
    let mut out = BTreeMap::new();
    for line in text.lines() {
        let Some((series, value)) = line.rsplit_once(' ') else {
            continue;
        };
        let Ok(value) = value.parse::<f64>() else {
            continue;
        };
        let Some((name, labels)) = series.split_once('{') else {
            continue;
        };
        let Some(labels) = labels.strip_suffix('}') else {
            continue;
        };
        let mut parsed = Vec::new();
        for pair in labels.split("\",") {
            let Some((k, v)) = pair.split_once("=\"") else {
                continue;
            };
            parsed.push((k.to_owned(), unescape(v.trim_end_matches('"'))));
        }
        if name.starts_with("popsync_") {
            out.insert((name.to_owned(), parsed), value);
        }
    }
    out
}

fn escape(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

fn unescape(v: &str) -> String {
    v.replace("\\n", "\n")
        .replace("\\\"", "\"")
        .replace("\\\\", "\\")
}

const HELP: &[(&str, &str, &str)] = &[
    (
        "popsync_last_run_timestamp_seconds",
        "gauge",
        "When the account's last fetch ended (Unix time).",
    ),
    (
        "popsync_last_success_timestamp_seconds",
        "gauge",
        "When the account's last fetch that exited 0 ended (Unix time).",
    ),
    (
        "popsync_last_run_exit_code",
        "gauge",
        "The exit code of the account's last fetch.",
    ),
    (
        "popsync_last_run_messages",
        "gauge",
        "Messages the account's last fetch delivered.",
    ),
    (
        "popsync_last_run_bytes",
        "gauge",
        "Bytes the account's last fetch delivered.",
    ),
    (
        "popsync_messages_total",
        "counter",
        "Messages delivered, over all runs.",
    ),
    (
        "popsync_bytes_total",
        "counter",
        "Bytes delivered, over all runs.",
    ),
    (
        "popsync_failures_total",
        "counter",
        "Fetches that did not exit 0, by class (temporary, failed).",
    ),
];

/// The new file contents: `previous` updated with this run's `reports`.
pub fn render(previous: &str, reports: &[AccountReport], now: DateTime<Utc>) -> String {
    let mut samples = read_samples(previous);
    let at = now.timestamp() as f64;
    for r in reports.iter().filter(|r| !r.account.is_empty()) {
        let account = vec![("account".to_owned(), r.account.clone())];
        let mut set = |name: &str, value: f64| {
            samples.insert((name.to_owned(), account.clone()), value);
        };
        set("popsync_last_run_timestamp_seconds", at);
        set("popsync_last_run_exit_code", f64::from(r.code.code()));
        set("popsync_last_run_messages", r.fetched as f64);
        set("popsync_last_run_bytes", r.bytes as f64);
        if r.error.is_none() {
            set("popsync_last_success_timestamp_seconds", at);
        }
        let mut add = |name: &str, labels: Vec<(String, String)>, by: f64| {
            *samples.entry((name.to_owned(), labels)).or_insert(0.0) += by;
        };
        add("popsync_messages_total", account.clone(), r.fetched as f64);
        add("popsync_bytes_total", account.clone(), r.bytes as f64);
        for class in ["temporary", "failed"] {
            let mut labels = account.clone();
            labels.push(("class".to_owned(), class.to_owned()));
            let failed = r.error.is_some() && r.status == class;
            add(
                "popsync_failures_total",
                labels,
                if failed { 1.0 } else { 0.0 },
            );
        }
    }
    let mut out = String::new();
    for (name, kind, help) in HELP {
        out.push_str(&format!("# HELP {name} {help}\n# TYPE {name} {kind}\n"));
        for ((n, labels), value) in samples.iter().filter(|((n, _), _)| n == name) {
            let labels: Vec<String> = labels
                .iter()
                .map(|(k, v)| format!("{k}=\"{}\"", escape(v)))
                .collect();
            out.push_str(&format!("{n}{{{}}} {value}\n", labels.join(",")));
        }
    }
    out
}

/// Update the metrics file at `path` with this run's reports: read what is
/// there, write the new contents to a temporary file beside it, and rename
/// it over the old one, so that the collector never reads half a file.
pub fn write(
    path: &Path,
    reports: &[AccountReport],
    now: DateTime<Utc>,
) -> Result<(), MetricsError> {
    let err = |source| MetricsError {
        path: path.to_owned(),
        source,
    };
    let previous = match fs::read_to_string(path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
        Err(e) => return Err(err(e)),
    };
    let text = render(&previous, reports, now);
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let mut tmp = tempfile::Builder::new()
        .prefix(".popsync-metrics.")
        .tempfile_in(dir)
        .map_err(err)?;
    tmp.write_all(text.as_bytes()).map_err(err)?;
    tmp.as_file().sync_all().map_err(err)?;
    // node_exporter runs as another user: the file is for reading.
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        fs::set_permissions(tmp.path(), fs::Permissions::from_mode(0o644)).map_err(err)?;
    }
    tmp.persist(path).map_err(|e| err(e.error))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::exit::ExitCode;
    use chrono::TimeZone;

    fn report(account: &str, code: ExitCode, fetched: u64, bytes: u64) -> AccountReport {
        let mut r = AccountReport::not_started(account, code);
        r.fetched = fetched;
        r.bytes = bytes;
        r.status = code.status_word();
        r.error = (code != ExitCode::Ok).then(|| "it failed".to_owned());
        r
    }

    fn value(text: &str, series: &str) -> Option<f64> {
        text.lines()
            .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
    }

    #[test]
    fn counters_add_up_and_a_failure_keeps_the_last_success() {
        let t1 = Utc.with_ymd_and_hms(2026, 12, 1, 0, 0, 0).unwrap();
        let t2 = t1 + chrono::Duration::hours(1);
        let first = render("", &[report("work", ExitCode::Ok, 3, 300)], t1);
        let second = render(&first, &[report("work", ExitCode::TempFail, 0, 0)], t2);
        let w = "{account=\"work\"}";
        assert_eq!(
            value(&second, &format!("popsync_messages_total{w}")),
            Some(3.0)
        );
        assert_eq!(
            value(&second, &format!("popsync_bytes_total{w}")),
            Some(300.0)
        );
        assert_eq!(
            value(
                &second,
                &format!("popsync_last_success_timestamp_seconds{w}")
            ),
            Some(t1.timestamp() as f64)
        );
        assert_eq!(
            value(&second, &format!("popsync_last_run_timestamp_seconds{w}")),
            Some(t2.timestamp() as f64)
        );
        assert_eq!(
            value(&second, &format!("popsync_last_run_exit_code{w}")),
            Some(75.0)
        );
        assert_eq!(
            value(
                &second,
                "popsync_failures_total{account=\"work\",class=\"temporary\"}"
            ),
            Some(1.0)
        );
        assert_eq!(
            value(
                &second,
                "popsync_failures_total{account=\"work\",class=\"failed\"}"
            ),
            Some(0.0)
        );
    }

    #[test]
    fn accounts_not_in_the_run_keep_their_lines_and_names_are_escaped() {
        let t = Utc.with_ymd_and_hms(2026, 12, 1, 0, 0, 0).unwrap();
        let first = render("", &[report("a\"b", ExitCode::Ok, 1, 10)], t);
        assert!(first.contains("account=\"a\\\"b\""), "{first}");
        let second = render(&first, &[report("other", ExitCode::Ok, 2, 20)], t);
        assert_eq!(
            value(&second, "popsync_messages_total{account=\"a\\\"b\"}"),
            Some(1.0)
        );
        assert_eq!(
            value(&second, "popsync_messages_total{account=\"other\"}"),
            Some(2.0)
        );
        assert!(second.contains("# TYPE popsync_failures_total counter"));
    }
}
