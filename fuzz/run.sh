#!/usr/bin/env bash
# Runs every fuzz target for SECONDS each (default 10; CI uses that, by hand run minutes):
#   fuzz/run.sh 600            # ten minutes per target
#   fuzz/run.sh 60 path        # one target
# Coverage-guided with libFuzzer through cargo-fuzz (installed when missing), on the stable
# toolchain without a sanitizer (-s none): the code under test is safe Rust, and stable is the
# one toolchain the machines have. A crash stops the run, leaves its input in
# fuzz/artifacts/<target>/; fix it, then copy the input into fuzz/seeds/<target>/ so every later
# run replays it.
set -euo pipefail
cd "$(dirname "$0")/.."
seconds=${1:-10}
shift || true
targets=("$@")
((${#targets[@]})) || targets=(path cookies key rules config origin transports)
command -v cargo-fuzz >/dev/null || cargo install cargo-fuzz --locked --version 0.13.2
# Targets that write files (config) write them under a scratch TMPDIR, removed on exit.
scratch=$(mktemp -d)
trap 'rm -rf "$scratch"' EXIT
export TMPDIR="$scratch"
for t in "${targets[@]}"; do
    mkdir -p "fuzz/corpus/$t" "fuzz/seeds/$t"
    echo "== fuzz $t (${seconds}s)"
    log="fuzz/corpus/$t.log"
    if ! cargo fuzz run "$t" -s none "fuzz/corpus/$t" "fuzz/seeds/$t" -- \
        -max_total_time="$seconds" -print_final_stats=0 >"$log" 2>&1; then
        tail -40 "$log" >&2
        echo "fuzz target $t failed (crash inputs: fuzz/artifacts/$t/)" >&2
        exit 1
    fi
    grep -E "^Done" "$log" || true
done
