//! The config parser (`popsync::config::parse_str`, the part of `load` after
//! reading the file): arbitrary TOML text must give a `Config` or a
//! `ConfigError::Invalid` naming a line inside the text, never a panic.

use std::path::Path;

use popsync::config::{ConfigError, parse_str};

/// Runs every check of this target on one input; panics on a failure.
pub fn check(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let path = Path::new("/fuzz/config.toml");
    match parse_str(path, text) {
        Ok(config) => {
            for a in &config.accounts {
                assert!(!a.name.is_empty());
                assert_ne!(a.port, 0);
                assert!(!a.host.trim().is_empty());
                let _ = a.deliver.describe();
            }
            let _ = config.select(&[], true);
        }
        Err(e) => {
            let lines = text.bytes().filter(|&b| b == b'\n').count() + 1;
            match &e {
                ConfigError::Invalid { line, .. } => {
                    assert!((1..=lines).contains(line), "line {line} of {lines}");
                }
                other => panic!("parsing text gave a non-parse error: {other:?}"),
            }
            let _ = e.to_string();
            let _ = e.exit_code();
        }
    }
}
