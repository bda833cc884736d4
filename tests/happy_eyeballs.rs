//! Happy Eyeballs (RFC 8305) through the real binary. The host name
//! `dual.test` resolves (through a private /etc/hosts in a mount namespace of
//! the run's own) to ::1 first and 127.0.0.1 second. ::1 black-holes SYNs:
//! its listener's accept queue is full, so the kernel drops them, as for an
//! unreachable address. The scripted server answers on 127.0.0.1. A client
//! that tries one address after the other spends its whole `timeout` on ::1
//! and fails with 75; popsync must fetch everything, with nothing on stderr.

mod common;
mod fault;

use std::os::fd::AsRawFd;
use std::process::Command;
use std::time::Duration;

use common::{Running, TestEnv, cannot_run, sorted};
use fault::FaultServer;

#[test]
fn a_black_holed_first_address_costs_no_timeout() {
    if unsafe { libc::geteuid() } != 0 || Command::new("unshare").arg("--version").output().is_err()
    {
        cannot_run("needs root and util-linux unshare for a private /etc/hosts");
        return;
    }
    let mail = fault::messages(3);
    let srv = FaultServer::builder().messages(mail.clone()).start();
    // The black hole: the same port on ::1, its accept queue filled.
    let hole = match std::net::TcpListener::bind(("::1", srv.port())) {
        Ok(l) => l,
        Err(e) => {
            cannot_run(&format!("cannot listen on [::1]:{}: {e}", srv.port()));
            return;
        }
    };
    // SAFETY: listen(2) on a socket we own; it only shrinks the backlog.
    assert_eq!(unsafe { libc::listen(hole.as_raw_fd(), 0) }, 0);
    let _filler = std::net::TcpStream::connect(hole.local_addr().expect("hole address"))
        .expect("fill the accept queue");

    let env = TestEnv::new();
    let hosts = env.path().join("hosts");
    std::fs::write(&hosts, "::1 dual.test\n127.0.0.1 dual.test\n").expect("write hosts");
    let timeout_secs = 3;
    let config = env
        .fault_config(&srv, timeout_secs, "")
        .replace("host = \"127.0.0.1\"", "host = \"dual.test\"");
    let config_path = env.write_config(&config);

    // The binary with the harness's environment, inside a mount namespace
    // where /etc/hosts is ours.
    let popsync = env.command();
    let mut cmd = Command::new("unshare");
    cmd.args([
        "-m",
        "sh",
        "-c",
        "mount --bind \"$1\" /etc/hosts && shift && exec \"$@\"",
        "sh",
    ])
    .arg(&hosts)
    .arg(popsync.get_program())
    .arg("--config")
    .arg(&config_path)
    .args(["fetch", fault::ACCOUNT, "-q"])
    .current_dir(env.path())
    .stdin(std::process::Stdio::null())
    .stdout(std::process::Stdio::piped())
    .stderr(std::process::Stdio::piped());
    for (k, v) in popsync.get_envs() {
        match v {
            Some(v) => cmd.env(k, v),
            None => cmd.env_remove(k),
        };
    }
    let out = Running::spawn(cmd).finish_within(Duration::from_secs(30));
    assert_eq!(out.code, 0, "stderr: {}", out.stderr);
    assert_eq!(out.stderr, "", "a successful run says nothing on stderr");
    assert_eq!(fault::delivered(&env), sorted(mail));
}
