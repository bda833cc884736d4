//! `proxy = "socks5://..."` through the real binary, a real SOCKS5 server
//! (Debian's microsocks, with user/password authentication, RFC 1929) and
//! the scripted POP3 server: the mail comes through the proxy; a wrong
//! proxy password is 77 and a proxy that is down is 69, each naming the
//! proxy; with `socks5h://` the proxy resolves a name that only it knows
//! (its own /etc/hosts, in a mount namespace), which `socks5://` cannot.
//! The IMAP target and the OAuth2 token endpoint of an account with a
//! proxy are reached through it too.

mod common;
mod fault;
mod imap;
mod oauth;
mod oauthcase;

use std::net::{TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use common::{TestEnv, assert_contains, cannot_run, sorted};
use fault::FaultServer;

/// A running microsocks on 127.0.0.1, stopped when dropped.
struct Socks {
    child: Child,
    port: u16,
}

impl Drop for Socks {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

/// Start microsocks with user `proxyuser`, password `proxypw`; `hosts`:
/// run it in a mount namespace of its own with this /etc/hosts.
fn socks(hosts: Option<&std::path::Path>) -> Option<Socks> {
    if Command::new("microsocks").arg("-h").output().is_err() {
        cannot_run("microsocks is not installed (tests/run.sh installs it)");
        return None;
    }
    let port = free_port();
    let args = [
        "-i",
        "127.0.0.1",
        "-p",
        &port.to_string(),
        "-u",
        "proxyuser",
        "-P",
        "proxypw",
    ];
    let mut cmd = match hosts {
        None => {
            let mut c = Command::new("microsocks");
            c.args(args);
            c
        }
        Some(h) => {
            if unsafe { libc::geteuid() } != 0 {
                cannot_run("needs root to give the proxy an /etc/hosts of its own");
                return None;
            }
            let mut c = Command::new("unshare");
            c.args([
                "-m",
                "sh",
                "-c",
                "mount --bind \"$1\" /etc/hosts && shift && exec microsocks \"$@\"",
                "sh",
            ])
            .arg(h)
            .args(args);
            c
        }
    };
    let child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start microsocks");
    let started = Instant::now();
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "microsocks did not start"
        );
        thread::sleep(Duration::from_millis(20));
    }
    Some(Socks { child, port })
}

/// The fault-server account, reached through `proxy`, with `host` instead
/// of 127.0.0.1.
fn config(env: &TestEnv, srv: &FaultServer, host: &str, proxy: &str) -> String {
    env.fault_config(srv, 3, &format!("proxy = \"{proxy}\"\n"))
        .replace("host = \"127.0.0.1\"", &format!("host = \"{host}\""))
}

#[test]
fn mail_comes_through_the_proxy_and_its_failures_name_it() {
    let Some(proxy) = socks(None) else { return };
    let mail = fault::messages(2);
    let srv = FaultServer::builder().messages(mail.clone()).start();
    let env = TestEnv::new();
    let url = format!("socks5://proxyuser:proxypw@127.0.0.1:{}", proxy.port);
    let out = env.run_config(
        &config(&env, &srv, "127.0.0.1", &url),
        &["fetch", "test", "-q"],
    );
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert_eq!(fault::delivered(&env), sorted(mail));
    // probe names the proxy, without its password.
    let out = env.run_config(&config(&env, &srv, "127.0.0.1", &url), &["probe", "test"]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert_contains(
        &out.stdout,
        &format!(
            "proxy:              socks5://proxyuser:***@127.0.0.1:{}",
            proxy.port
        ),
        "probe's output",
    );
    assert_contains(
        &out.stdout,
        &format!("127.0.0.1:{} (the proxy)", proxy.port),
        "probe's output",
    );
    assert!(!out.stdout.contains("proxypw"), "{}", out.stdout);

    let env = TestEnv::new();
    let wrong = format!("socks5://proxyuser:wrong@127.0.0.1:{}", proxy.port);
    let out = env.run_config(&config(&env, &srv, "127.0.0.1", &wrong), &["fetch", "test"]);
    assert_eq!(out.code, 77, "{}", out.stderr);
    assert_contains(
        &out.stderr,
        "proxy socks5://proxyuser:***@127.0.0.1",
        "stderr",
    );
    assert!(
        !out.stderr.contains("wrong"),
        "the proxy password was printed: {}",
        out.stderr
    );

    let port = proxy.port;
    drop(proxy);
    let out = env.run_config(&config(&env, &srv, "127.0.0.1", &url), &["fetch", "test"]);
    assert_eq!(out.code, 69, "{}", out.stderr);
    assert_contains(
        &out.stderr,
        &format!("127.0.0.1:{port}"),
        "stderr (the proxy)",
    );
    assert!(fault::delivered(&env).is_empty());
}

#[test]
fn socks5h_lets_the_proxy_resolve_a_name_only_it_knows() {
    let env = TestEnv::new();
    let hosts = env.path().join("proxy-hosts");
    std::fs::write(&hosts, "127.0.0.1 pop.proxy-only.test localhost\n").expect("hosts");
    let Some(proxy) = socks(Some(&hosts)) else {
        return;
    };
    let mail = fault::messages(1);
    let srv = FaultServer::builder().messages(mail.clone()).start();
    let remote = format!("socks5h://proxyuser:proxypw@127.0.0.1:{}", proxy.port);
    let out = env.run_config(
        &config(&env, &srv, "pop.proxy-only.test", &remote),
        &["fetch", "test", "-q"],
    );
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert_eq!(fault::delivered(&env), sorted(mail));

    let env = TestEnv::new();
    let local = format!("socks5://proxyuser:proxypw@127.0.0.1:{}", proxy.port);
    let out = env.run_config(
        &config(&env, &srv, "pop.proxy-only.test", &local),
        &["fetch", "test"],
    );
    assert_eq!(out.code, 69, "{}", out.stderr);
    assert_contains(
        &out.stderr,
        "cannot resolve host name pop.proxy-only.test",
        "stderr",
    );
}

/// `config` with delivery into the IMAP `target` (a TOML inline table)
/// instead of the Maildir; without `proxy` when it is empty.
fn imap_config(env: &TestEnv, srv: &FaultServer, target: &str, proxy: &str) -> String {
    let cfg = config(env, srv, "127.0.0.1", proxy);
    let cfg = if proxy.is_empty() {
        cfg.replace("proxy = \"\"\n", "")
    } else {
        cfg
    };
    cfg.lines()
        .map(|l| {
            if l.starts_with("deliver = ") {
                format!("deliver = {target}\n")
            } else {
                format!("{l}\n")
            }
        })
        .collect()
}

#[test]
fn the_imap_target_is_reached_through_the_accounts_proxy_too() {
    // The IMAP server's name is known only to the proxy: the delivery
    // works only if the IMAP connection goes through it as well.
    let env = TestEnv::new();
    let hosts = env.path().join("proxy-hosts");
    std::fs::write(&hosts, "127.0.0.1 imap.proxy-only.test localhost\n").expect("hosts");
    let Some(proxy) = socks(Some(&hosts)) else {
        return;
    };
    let mail = fault::messages(2);
    let pop = FaultServer::builder().messages(mail.clone()).start();
    let imap_srv = imap::fault::FaultServer::builder().start();
    let target = imap::Target::fault_server(&imap_srv, "INBOX")
        .toml()
        .replace("host = \"127.0.0.1\"", "host = \"imap.proxy-only.test\"");
    let remote = format!("socks5h://proxyuser:proxypw@127.0.0.1:{}", proxy.port);
    let out = env.run_config(
        &imap_config(&env, &pop, &target, &remote),
        &["fetch", "test", "-q"],
    );
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert_eq!(imap_srv.messages("INBOX").len(), 2);
    assert!(
        fault::delivered(&env).is_empty(),
        "nothing went to the Maildir"
    );

    // Without the proxy the name does not resolve: the IMAP target is not
    // reached, and nothing more is appended.
    let env = TestEnv::new();
    let out = env.run_config(&imap_config(&env, &pop, &target, ""), &["fetch", "test"]);
    assert_eq!(out.code, 69, "{}", out.stderr);
    assert_contains(
        &out.stderr,
        "cannot resolve host name imap.proxy-only.test",
        "stderr",
    );
    assert_eq!(imap_srv.messages("INBOX").len(), 2);
}

#[test]
fn the_token_endpoint_is_reached_through_the_accounts_proxy_too() {
    let Some(proxy) = socks(None) else { return };
    // 60 s left on the access token: every fetch refreshes it first.
    let oauthcase::Setup { env, oauth, pop } =
        oauthcase::setup(oauth::OAuthServer::builder().expires_in(60), 1);
    oauthcase::login(&env, oauthcase::NAME);
    let url = format!("socks5://proxyuser:proxypw@127.0.0.1:{}", proxy.port);
    let with_proxy = oauthcase::account(
        &env,
        oauthcase::NAME,
        &pop,
        &oauth,
        "xoauth2",
        &format!("proxy = \"{url}\""),
    );
    oauthcase::write(&env, 5, &[with_proxy]);
    let out = env.run(&["fetch", oauthcase::NAME]);
    out.assert_code(0);
    assert_eq!(oauth.token_requests(oauth::REFRESH_GRANT).len(), 1);
    assert_eq!(
        common::maildir_messages(&env.maildir(oauthcase::NAME)).len(),
        1
    );

    // With the proxy gone the token cannot be refreshed, although the
    // endpoint itself is up: it was reached only through the proxy.
    let port = proxy.port;
    drop(proxy);
    pop.add_message(b"Subject: later\n\nlater\n", "uid-later");
    let out = env.run(&["fetch", oauthcase::NAME]);
    out.assert_code(75);
    assert_contains(
        &out.stderr,
        &format!("through proxy socks5://proxyuser:***@127.0.0.1:{port}"),
        "stderr",
    );
    assert!(!out.stderr.contains("proxypw"), "{}", out.stderr);
    assert_eq!(oauth.token_requests(oauth::REFRESH_GRANT).len(), 1);
    assert_eq!(
        common::maildir_messages(&env.maildir(oauthcase::NAME)).len(),
        1
    );
}
