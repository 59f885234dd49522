#!/usr/bin/env bash
# Purge benchmark (issue 3): surrogate-key purge of 100k objects sharing one key and of one
# key among 100k keys, and the purge index's memory per cached object. Not run by CI.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo run --release --quiet --example purge_bench
