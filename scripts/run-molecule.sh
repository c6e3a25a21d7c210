#!/usr/bin/env bash
# Runs `molecule test` for each scenario named on the command line (default:
# default), always destroying its test hosts, even after a failure.
#   scripts/run-molecule.sh default [production ...]
# Exits non-zero if any scenario failed; every scenario runs regardless.
set -uo pipefail

REPO_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$REPO_DIR" || exit 1
# Molecule and Ansible from the project's venv, whoever calls this.
if [ -x "$REPO_DIR/.venv/bin/molecule" ]; then
  export PATH="$REPO_DIR/.venv/bin:$PATH"
fi
command -v molecule >/dev/null 2>&1 || { echo "run-molecule: molecule not found (make venv)" >&2; exit 1; }

# Molecule checks the engine before its create step runs: start it (and build
# the images) first.
scripts/testhosts build || exit 1

mkdir -p build/junit
[ $# -gt 0 ] || set -- default
failed=()
for scenario in "$@"; do
  echo "==> molecule test -s $scenario"
  started=$SECONDS
  # The disaster-recovery drill's measured figures (production scenario).
  rm -f build/drill-figures.txt
  if molecule test -s "$scenario" --destroy always; then
    echo "<== $scenario: passed in $((SECONDS - started))s"
  else
    echo "<== $scenario: FAILED after $((SECONDS - started))s" >&2
    failed+=("$scenario")
  fi
  if [ -s build/drill-figures.txt ]; then
    echo "<== $scenario: drill figures:"
    sed 's/^/    /' build/drill-figures.txt
  fi
done

if [ ${#failed[@]} -gt 0 ]; then
  echo "run-molecule: failed scenarios: ${failed[*]}" >&2
  exit 1
fi
