#!/usr/bin/env bash
# Structure checks, cheap and offline: one version of reqwest in the normal
# dependency tree, the cloud backends independent of the sync engine, and
# the sync planner independent of the config. Exits non-zero with a message
# naming the broken rule.
set -euo pipefail
cd "$(dirname "$0")/.."

echo "structure: one reqwest in the normal dependency tree; no crate::sync in src/cloud; no crate::config in src/sync/plan.rs"
fail=0
problem() {
    echo "structure: $*" >&2
    fail=1
}

# (a) Exactly one reqwest in the normal (non-dev, non-build) dependency tree
# of the workspace. `--offline`: the lock file and the local registry cache
# are enough, no network.
tree=$(cargo tree --offline --workspace -e normal --prefix none --format '{p}') || {
    echo "structure: cargo tree failed (see above)" >&2
    exit 1
}
versions=$(awk '$1 == "reqwest" { print $2 }' <<<"$tree" | sort -u)
count=$(grep -c . <<<"$versions" || true)
if [ "$count" -ne 1 ]; then
    problem "expected exactly one version of reqwest in the normal dependency tree, found $count:" \
        "$(tr '\n' ' ' <<<"$versions")(see: cargo tree -e normal -d --workspace)"
fi

# Fails on any line of `path` (a file or directory) matching `pattern`, and
# if the path is gone: a renamed directory must not pass silently.
forbid() {
    local pattern=$1 path=$2 rule=$3 hits
    if [ ! -e "$path" ]; then
        problem "$path does not exist; update tests/structure.sh ($rule)"
        return
    fi
    local rc=0
    hits=$(grep -rn -- "$pattern" "$path") || rc=$?
    case $rc in
        0)
            problem "$rule; found \"$pattern\" in $path:"
            echo "$hits" >&2
            ;;
        1) ;;
        *) problem "grep failed on $path ($rule)" ;;
    esac
}

# (b) The cloud backends do not depend on the sync engine.
forbid "crate::sync" src/cloud "src/cloud must not use the sync engine"
# (c) The sync planner does not depend on the config.
forbid "crate::config" src/sync/plan.rs "src/sync/plan.rs must not use the config"

if [ "$fail" -ne 0 ]; then
    exit 1
fi
echo "structure: ok (reqwest ${versions})"
