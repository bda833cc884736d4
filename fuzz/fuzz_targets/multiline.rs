//! Fuzz target `multiline`: the checks are in `fuzz/checks/multiline.rs`, shared with
//! `tests/fuzz_regressions.rs`, which replays the seeds and found inputs.
#![no_main]

#[path = "../checks/multiline.rs"]
mod checks;

libfuzzer_sys::fuzz_target!(|data: &[u8]| checks::check(data));
