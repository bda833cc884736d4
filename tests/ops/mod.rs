//! Helpers shared by `operations.rs` and `exit_codes_and_output.rs`:
//! delivering sample mail, accounts on the fault server, background runs,
//! and readers of popsync's output (`--json` by account, `seen list`).
#![allow(dead_code)]

use std::fs;
use std::path::Path;
use std::thread;
use std::time::{Duration, Instant};

use crate::common::{Output, Running, TestEnv, User, sample_message, toml_string};
use crate::fault::FaultServer;

/// How long a background run may take before the test kills it and fails.
pub const BACKGROUND_TIMEOUT: Duration = Duration::from_secs(90);

/// How many files `maildir`/new and cur hold (cheap: names only).
pub fn maildir_count(maildir: &Path) -> usize {
    ["new", "cur"]
        .iter()
        .map(|sub| fs::read_dir(maildir.join(sub)).map_or(0, |d| d.count()))
        .sum()
}

/// Polls until at least `n` deliveries into `maildir` have started (files in
/// tmp/, new/ and cur/); false if `run` ended first or `limit` passed.
pub fn wait_for_deliveries(run: &mut Running, maildir: &Path, n: usize, limit: Duration) -> bool {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        let started =
            maildir_count(maildir) + fs::read_dir(maildir.join("tmp")).map_or(0, |d| d.count());
        if started >= n {
            return true;
        }
        if run.exited() {
            return false;
        }
        thread::sleep(Duration::from_millis(2));
    }
    false
}

/// Delivers `n` sample messages numbered from `first`, each with
/// `body_lines` extra lines, and returns them.
pub fn deliver(user: &User, first: usize, n: usize, body_lines: usize) -> Vec<Vec<u8>> {
    (first..first + n)
        .map(|i| {
            let m = sample_message(i, body_lines);
            user.deliver(&m);
            m
        })
        .collect()
}

/// An account block for a scripted server: plain TCP (the fault server has
/// no STLS), user alice / secret, delivery into `maildir`, a short timeout.
pub fn fault_account(name: &str, srv: &FaultServer, maildir: &Path, extra: &str) -> String {
    format!(
        "[accounts.{name}]\nhost = \"127.0.0.1\"\nport = {port}\ntls = \"none\"\n\
         allow_plaintext = true\nuser = \"alice\"\npassword = \"secret\"\n\
         deliver = {{ maildir = {maildir} }}\nreceived_header = false\ntimeout = 10\n{extra}\n",
        port = srv.port(),
        maildir = toml_string(&maildir.to_string_lossy()),
    )
}

/// A small LF message for the scripted server.
pub fn fault_message(i: usize) -> Vec<u8> {
    format!(
        "From: sender{i}@example.org\nTo: alice@example.org\nSubject: message {i}\n\
         Message-ID: <{i}@ops.test>\n\nHello {i}.\n.a dot line\nFrom the start\n"
    )
    .into_bytes()
}

/// The `--json` objects on stdout, by account name.
pub fn json_by_account(out: &Output) -> std::collections::BTreeMap<String, serde_json::Value> {
    out.stdout
        .lines()
        .map(|line| {
            let v: serde_json::Value = serde_json::from_str(line)
                .unwrap_or_else(|e| panic!("stdout line is not JSON: {line:?}: {e}\n{out:?}"));
            let name = v["account"]
                .as_str()
                .unwrap_or_else(|| panic!("no \"account\" in {line}"))
                .to_owned();
            (name, v)
        })
        .collect()
}

/// The UIDLs `popsync seen list ACCOUNT` prints (first field of each line),
/// with the location (last field).
pub fn seen_list(env: &TestEnv, account: &str) -> Vec<(String, String)> {
    let out = env.run(&["seen", "list", account]);
    out.assert_code(0);
    out.stdout
        .lines()
        .map(|l| {
            let uidl = l.split(' ').next().unwrap_or_default().to_owned();
            let location = l.rsplit(' ').next().unwrap_or_default().to_owned();
            (uidl, location)
        })
        .collect()
}

/// A port on 127.0.0.1 that nothing listens on (bound, then released).
pub fn closed_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
    listener.local_addr().expect("local address").port()
}

pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}
