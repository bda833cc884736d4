#!/usr/bin/env bash
# Run every fuzz target in turn, one at a time (-jobs=1), for SECONDS each
# (default 60). Needs cargo-fuzz (`cargo install cargo-fuzz`); on a stable
# toolchain RUSTC_BOOTSTRAP=1 unlocks the nightly flags cargo-fuzz passes.
# New corpus entries go to fuzz/corpus/<target>/ (git-ignored), crashes to
# fuzz/artifacts/<target>/. Usage: bash fuzz/run-all.sh [SECONDS] [TARGET...]
set -euo pipefail
cd "$(dirname "$0")"
export RUSTC_BOOTSTRAP=1
secs=${1:-60}
shift || true
targets=("$@")
[ ${#targets[@]} -gt 0 ] || targets=(status_line multiline capa config mboxrd)
for t in "${targets[@]}"; do
    extra=()
    case $t in
        config) dict=dict/config.dict ;;
        mboxrd) dict=dict/mboxrd.dict ;;
        # Lines must be able to pass MAX_LINE (8192) for the LineTooLong paths.
        status_line) dict=dict/pop3.dict; extra=(-max_len=20000) ;;
        *) dict=dict/pop3.dict ;;
    esac
    mkdir -p "corpus/$t"
    echo "== $t: ${secs}s"
    cargo fuzz run -O "$t" "corpus/$t" "seeds/$t" -- \
        -jobs=1 -max_total_time="$secs" -dict="$dict" -print_final_stats=1 "${extra[@]}"
    # With -jobs=1 libFuzzer logs to fuzz-0.log; keep the summary.
    if [ -f fuzz-0.log ]; then
        grep -E '^(Done|stat::)|ERROR|SUMMARY|panicked|Test unit written' fuzz-0.log || true
        mv fuzz-0.log "fuzz-$t.log"
    fi
done
