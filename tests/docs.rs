//! The man page and shell completions are generated from the clap definitions
//! (plus the prose sections in man/sections.roff) and committed. This test
//! fails when they are stale; `POPSYNC_BLESS=1 cargo test --test docs`
//! rewrites them.

use std::path::Path;

use clap::CommandFactory;
use clap_complete::Shell;
use popsync::cli::Cli;

fn man_page() -> Vec<u8> {
    let cmd = Cli::command();
    let man = clap_mangen::Man::new(cmd.clone())
        .section("1")
        .manual("popsync manual");
    let mut out = Vec::new();
    man.render_title(&mut out).unwrap();
    man.render_name_section(&mut out).unwrap();
    man.render_synopsis_section(&mut out).unwrap();
    man.render_description_section(&mut out).unwrap();
    man.render_options_section(&mut out).unwrap();
    // One subsection per command, with its own options.
    out.extend_from_slice(b".SH COMMANDS\n");
    for sub in cmd.get_subcommands() {
        let sub_man = clap_mangen::Man::new(sub.clone());
        let mut synopsis = Vec::new();
        sub_man.render_synopsis_section(&mut synopsis).unwrap();
        let synopsis = String::from_utf8(synopsis).unwrap();
        let usage = synopsis
            .lines()
            .filter(|l| !l.starts_with(".SH"))
            .collect::<Vec<_>>()
            .join("\n");
        out.extend_from_slice(format!(".SS \"popsync {}\"\n", sub.get_name()).as_bytes());
        if let Some(about) = sub.get_about() {
            out.extend_from_slice(format!("{about}\n.PP\n").as_bytes());
        }
        out.extend_from_slice(
            usage
                .replace(
                    &format!("\\fB{}\\fR", sub.get_name()),
                    &format!("\\fBpopsync {}\\fR", sub.get_name()),
                )
                .as_bytes(),
        );
        out.push(b'\n');
        let mut opts = Vec::new();
        sub_man.render_options_section(&mut opts).unwrap();
        let opts = String::from_utf8(opts).unwrap();
        // Drop the section header: these options belong to the subsection.
        let body: Vec<&str> = opts.lines().filter(|l| !l.starts_with(".SH")).collect();
        out.extend_from_slice(body.join("\n").as_bytes());
        out.push(b'\n');
    }
    let sections =
        std::fs::read(Path::new(env!("CARGO_MANIFEST_DIR")).join("man/sections.roff")).unwrap();
    out.extend_from_slice(&sections);
    man.render_version_section(&mut out).unwrap();
    out
}

fn completions() -> Vec<(&'static str, Vec<u8>)> {
    [
        (Shell::Bash, "popsync.bash"),
        (Shell::Zsh, "_popsync"),
        (Shell::Fish, "popsync.fish"),
    ]
    .into_iter()
    .map(|(shell, name)| {
        let mut cmd = Cli::command();
        let mut out = Vec::new();
        clap_complete::generate(shell, &mut cmd, "popsync", &mut out);
        (name, out)
    })
    .collect()
}

#[test]
fn man_page_and_completions_are_current() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut files = vec![(root.join("man/popsync.1"), man_page())];
    for (name, body) in completions() {
        files.push((root.join("completions").join(name), body));
    }
    let bless = std::env::var_os("POPSYNC_BLESS").is_some();
    let mut stale = Vec::new();
    for (path, want) in files {
        let have = std::fs::read(&path).unwrap_or_default();
        if have != want {
            if bless {
                std::fs::write(&path, &want).unwrap();
            } else {
                stale.push(path.display().to_string());
            }
        }
    }
    assert!(
        stale.is_empty(),
        "stale generated docs: {stale:?}; run `POPSYNC_BLESS=1 cargo test --test docs` and commit them"
    );
}

#[test]
fn man_page_lists_every_exit_code_and_config_key() {
    let man = String::from_utf8(man_page()).unwrap();
    for code in ["64", "66", "69", "70", "74", "75", "76", "77", "78"] {
        assert!(
            man.contains(&format!(".TP\n\\fB{code}\\fR")),
            "exit code {code} missing"
        );
    }
    for key in [
        "host",
        "port",
        "tls",
        "ca_file",
        "tls_fingerprint",
        "user",
        "password",
        "password_file",
        "password_command",
        "auth",
        "deliver",
        "retention",
        "max_size",
        "received_header",
        "filter",
        "allow_plaintext",
        "timeout",
        "command_timeout",
        "state_dir",
    ] {
        assert!(
            man.contains(&format!("\\fB{key}\\fR")),
            "config key {key} missing"
        );
    }
}
