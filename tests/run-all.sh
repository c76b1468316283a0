#!/usr/bin/env bash
# Runs every test: the Rust unit and integration tests of the workspace
# (including the emulator's conformance tests), then the end-to-end pytests
# against the built binaries.
set -euo pipefail
cd "$(dirname "$0")/.."
tests/structure.sh
cargo build --workspace --bins
cargo test --workspace
# pytest runs on Debian's Python (the one the binary embeds).
/usr/bin/python3 -m pytest -q pytests "$@"
