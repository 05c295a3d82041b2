#!/usr/bin/env bash
# hsync demo: plan and run a sync of examples/source into a copy of
# examples/destination. Run from anywhere:  bash examples/demo.sh
#
# The committed example trees are never modified: everything happens in a
# scratch directory (mktemp -d), which is left in place for you to inspect.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "$here/.." && pwd)"
venv="$root/.venv"
hsync="$venv/bin/hsync"

step() { printf '\n=== %s ===\n' "$*"; }

# --- 1. set up: a venv at the repo root with hsync installed (fast on re-runs)
if [[ ! -x "$venv/bin/python" ]]; then
    step "creating $venv"
    python3 -m venv "$venv"
fi
if [[ ! -x "$hsync" ]] || ! "$hsync" --help >/dev/null 2>&1; then
    step "installing hsync into $venv (pip install -e $root)"
    "$venv/bin/python" -m pip install -q -e "$root"
fi

# --- 2. scratch copies of the two trees
scratch="$(mktemp -d "${TMPDIR:-/tmp}/hsync-demo.XXXXXX")"
src="$scratch/source"
dst="$scratch/destination"
cp -a "$here/source" "$src"
cp -a "$here/destination" "$dst"

# Git does not keep mtimes: after a checkout every file has the checkout time.
# Make the copies look like two trees that were in sync once: every file, dir
# and symlink gets the same date, then the file edited since then (the update)
# gets a later one. Identical content now means identical (size, mtime), which
# is what lets hsync match moved files without a history.
find "$src" "$dst" -exec touch -h -d '2024-01-01 12:00:00' {} +
touch -d '2024-03-15 09:30:00' "$src/CHANGELOG.md"

# --- 3. the plan
step "plan: hsync diff SRC DST --tree"
rc=0
"$hsync" diff "$src" "$dst" --tree || rc=$?
echo "(exit code $rc: 0 = in sync, 1 = differ, 2 = error)"
if [[ $rc -ne 1 ]]; then
    echo "demo: expected the trees to differ (exit 1) before the sync" >&2
    exit 1
fi

step "plan: hsync diff SRC DST --json"
rc=0
"$hsync" diff "$src" "$dst" --json || rc=$?
echo "(exit code $rc)"

# --- 4. the sync (--delete: this destination was never synced by hsync, so without it
# hsync would keep its destination-only files and say what --delete would remove)
step "sync: hsync sync SRC DST --delete --state $scratch/state.sqlite"
sync_rc=0
"$hsync" sync "$src" "$dst" --delete --state "$scratch/state.sqlite" || sync_rc=$?
echo "(exit code $sync_rc)"

# --- 5. the result
step "after the sync: hsync diff SRC DST"
final_rc=0
"$hsync" diff "$src" "$dst" || final_rc=$?
echo "(exit code $final_rc)"

step "destination after the sync"
(cd "$dst" && find . -mindepth 1 -printf '%y\t%P\t%l\n' | sort -t "$(printf '\t')" -k2 |
    awk -F '\t' '{ t = ($1 == "d") ? "dir " : ($1 == "l") ? "link" : "file"
                   print "  " t "  " $2 (($1 == "l") ? " -> " $3 : "") }')
echo
echo "scratch dir (left for inspection): $scratch"
echo "  source:      $src"
echo "  destination: $dst"
echo "  history:     $scratch/state.sqlite"

if [[ $sync_rc -ne 0 || $final_rc -ne 0 ]]; then
    echo "demo: FAILED (sync exit $sync_rc, final diff exit $final_rc; expected 0 and 0)" >&2
    exit 1
fi
echo "demo: OK, destination is in sync with source"
