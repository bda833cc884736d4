//! Fuzz target `status_line`: the checks are in `fuzz/checks/status_line.rs`, shared with
//! `tests/fuzz_regressions.rs`, which replays the seeds and found inputs.
#![no_main]

#[path = "../checks/status_line.rs"]
mod checks;

libfuzzer_sys::fuzz_target!(|data: &[u8]| checks::check(data));
