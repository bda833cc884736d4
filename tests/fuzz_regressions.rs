//! The fuzz targets' checks (`fuzz/checks/*.rs`, shared with the cargo-fuzz
//! crate in `fuzz/`) as plain tests, so that `cargo test` holds popsync to
//! them without a fuzzer: every input in `fuzz/seeds/<target>/` (small,
//! hand-written) and `fuzz/regressions/<target>/` (inputs a fuzzer found a
//! bug with, kept once the bug is fixed) must pass. Each target's checks are
//! described at the top of its file and in tests/README.md ("Fuzzing").

use std::fs;
use std::path::Path;

#[path = "../fuzz/checks/capa.rs"]
mod capa;
#[path = "../fuzz/checks/config.rs"]
mod config;
#[path = "../fuzz/checks/mboxrd.rs"]
mod mboxrd;
#[path = "../fuzz/checks/multiline.rs"]
mod multiline;
#[path = "../fuzz/checks/status_line.rs"]
mod status_line;

/// Runs `check` on every file under fuzz/seeds/TARGET and
/// fuzz/regressions/TARGET, naming the file that fails.
fn replay(target: &str, check: fn(&[u8])) {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz");
    let mut count = 0;
    for kind in ["seeds", "regressions"] {
        let Ok(dir) = fs::read_dir(root.join(kind).join(target)) else {
            continue;
        };
        let mut paths: Vec<_> = dir.map(|e| e.expect("read_dir entry").path()).collect();
        paths.sort();
        for path in paths {
            let data = fs::read(&path).expect("read a fuzz input");
            let outcome = std::panic::catch_unwind(|| check(&data));
            assert!(
                outcome.is_ok(),
                "{} fails the {target} checks",
                path.display()
            );
            count += 1;
        }
    }
    assert!(count > 0, "no inputs for {target} under {}", root.display());
}

#[test]
fn status_lines_and_line_splitting_pass_the_fuzz_checks() {
    replay("status_line", status_line::check);
}

#[test]
fn multiline_bodies_decode_the_same_in_chunks_and_whole() {
    replay("multiline", multiline::check);
}

#[test]
fn capa_listings_and_headers_pass_the_fuzz_checks() {
    replay("capa", capa::check);
}

#[test]
fn config_texts_parse_or_fail_with_a_line_inside_the_text() {
    replay("config", config::check);
}

#[test]
fn mbox_messages_read_back_byte_for_byte_with_an_mboxrd_reader() {
    replay("mboxrd", mboxrd::check);
}

/// Edge cases the status_line checks are about, spelled out (the fuzzer's
/// default input size never reaches MAX_LINE).
#[test]
fn lines_at_and_past_max_line_pass_the_fuzz_checks() {
    use popsync::pop3::codec::MAX_LINE;
    for len in [MAX_LINE - 1, MAX_LINE, MAX_LINE + 1, MAX_LINE + 2] {
        let mut line = b"+OK ".to_vec();
        line.resize(len, b'a');
        status_line::check(&line);
        for end in [&b"\n"[..], b"\r", b"\r\n", b"\r\nnext"] {
            let mut buf = line.clone();
            buf.extend_from_slice(end);
            status_line::check(&buf);
        }
    }
}
