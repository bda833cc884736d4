//! `fetch --metrics FILE` through the real binary against the scripted
//! server: the Prometheus textfile after a success and after a failure,
//! written atomically (nothing else left in its directory), readable by the
//! collector, counters carried from run to run.

mod common;
mod fault;

use std::fs;
use std::os::unix::fs::PermissionsExt;

use common::TestEnv;
use fault::{Fault, FaultServer, On};

fn value(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
}

#[test]
fn the_textfile_after_a_success_and_after_a_failure() {
    let mail = fault::messages(2);
    let bytes: usize = mail.iter().map(Vec::len).sum();
    let srv = FaultServer::builder().messages(mail).start();
    let env = TestEnv::new();
    let dir = env.path().join("textfiles");
    fs::create_dir(&dir).expect("textfile dir");
    let file = dir.join("popsync.prom");
    let file_arg = file.to_str().expect("utf-8 path");

    let ok = fault::fetch_at(
        &env,
        &srv,
        "",
        &["-q", "--metrics", file_arg],
        Some("2026-12-01T10:00:00Z"),
    );
    assert_eq!(ok.code, 0, "{}", ok.stderr);
    let text = fs::read_to_string(&file).expect("metrics file written");
    let t = "{account=\"test\"}";
    let success_at = 1_796_119_200.0; // 2026-12-01T10:00:00Z
    assert_eq!(
        value(&text, &format!("popsync_last_success_timestamp_seconds{t}")),
        Some(success_at)
    );
    assert_eq!(
        value(&text, &format!("popsync_last_run_messages{t}")),
        Some(2.0)
    );
    assert_eq!(
        value(&text, &format!("popsync_messages_total{t}")),
        Some(2.0)
    );
    assert_eq!(
        value(&text, &format!("popsync_bytes_total{t}")),
        Some(bytes as f64)
    );
    assert_eq!(
        value(&text, &format!("popsync_last_run_exit_code{t}")),
        Some(0.0)
    );
    assert!(
        text.contains("# TYPE popsync_messages_total counter"),
        "{text}"
    );
    let mode = fs::metadata(&file).expect("stat").permissions().mode() & 0o777;
    assert_eq!(mode, 0o644, "node_exporter must be able to read it");

    // The server now refuses the password: 77, and the file says so.
    let bad = FaultServer::builder()
        .fault(On::Pass, Fault::Err("[AUTH] invalid password".into()))
        .start();
    let failed = env.run_config_with_env(
        &env.fault_config(&bad, 2, ""),
        &["fetch", "test", "-q", "--metrics", file_arg],
        &[("POPSYNC_NOW", "2026-12-01T11:00:00Z")],
    );
    assert_eq!(failed.code, 77, "{}", failed.stderr);
    let text = fs::read_to_string(&file).expect("metrics file");
    assert_eq!(
        value(&text, &format!("popsync_last_success_timestamp_seconds{t}")),
        Some(success_at),
        "a failure keeps the last success"
    );
    assert_eq!(
        value(&text, &format!("popsync_last_run_exit_code{t}")),
        Some(77.0)
    );
    assert_eq!(
        value(
            &text,
            "popsync_failures_total{account=\"test\",class=\"failed\"}"
        ),
        Some(1.0)
    );
    assert_eq!(
        value(&text, &format!("popsync_messages_total{t}")),
        Some(2.0)
    );
    let left: Vec<_> = fs::read_dir(&dir)
        .expect("read dir")
        .map(|e| e.expect("entry").file_name())
        .collect();
    assert_eq!(
        left,
        vec![std::ffi::OsString::from("popsync.prom")],
        "no temporary files left"
    );
}

#[test]
fn an_unwritable_metrics_file_is_74_after_the_mail_is_delivered() {
    let srv = FaultServer::builder().messages(fault::messages(1)).start();
    let env = TestEnv::new();
    let out = fault::fetch(
        &env,
        &srv,
        "",
        &["-q", "--metrics", "/nonexistent-dir/popsync.prom"],
    );
    assert_eq!(out.code, 74, "{}", out.stderr);
    common::assert_contains(&out.stderr, "/nonexistent-dir/popsync.prom", "stderr");
    assert_eq!(
        fault::delivered(&env).len(),
        1,
        "the mail was delivered all the same"
    );
}
