#!/usr/bin/env bash
# Runs `molecule test` for each scenario named on the command line (default:
# default), always destroying its test hosts, even after a failure.
#   scripts/run-molecule.sh default [production ...]
# Exits non-zero if any scenario failed; every scenario runs regardless.
#
#   scripts/run-molecule.sh --overlap OTHER SCENARIO
#     runs SCENARIO step by step and starts OTHER's whole `molecule test` in
#     the background once SCENARIO's hosts are prepared: Ansible's linear
#     strategy leaves about a third of the CPU idle during the fleet's converge
#     and idempotence runs (vmstat, quiet machine), and the fleet's tests
#     mostly wait (alerts' `for`, timers, restores, failover), so the one-host
#     scenario fits in beside them instead of after them. OTHER's
#     output goes to build/molecule-OTHER.log, its exit status to
#     build/molecule-OTHER.status.
#   scripts/run-molecule.sh --collect OTHER
#     waits for that background run, prints its output and exits with its
#     status; runs OTHER in the foreground when nothing started it.
set -uo pipefail

REPO_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$REPO_DIR" || exit 1
# Molecule and Ansible from the project's venv, whoever calls this.
if [ -x "$REPO_DIR/.venv/bin/molecule" ]; then
  export PATH="$REPO_DIR/.venv/bin:$PATH"
fi
command -v molecule >/dev/null 2>&1 || { echo "run-molecule: molecule not found (make venv)" >&2; exit 1; }

mkdir -p build/junit
overlap="" collect=""
case "${1:-}" in
  --overlap) overlap=${2:?--overlap needs a scenario}; shift 2 ;;
  --collect) collect=${2:?--collect needs a scenario}; shift 2 ;;
esac

# The background run's files.
log_of() { echo "build/molecule-$1.log"; }
status_of() { echo "build/molecule-$1.status"; }

if [ -n "$collect" ]; then
  if [ ! -e "build/molecule-$collect.started" ]; then
    exec "$0" "$collect"
  fi
  echo "==> molecule test -s $collect (ran in the background; waiting for it)"
  # Bounded: the background run has its own timeouts; this only keeps a lost one from hanging CI.
  for _ in $(seq 1 3600); do
    [ -s "$(status_of "$collect")" ] && break
    sleep 1
  done
  sed "s/^/[$collect] /" "$(log_of "$collect")"
  rm -f "build/molecule-$collect.started"
  status=$(cat "$(status_of "$collect")" 2>/dev/null || echo "missing")
  [ "$status" = 0 ] && exit 0
  echo "run-molecule: $collect: exit status $status" >&2
  exit 1
fi

# Molecule checks the engine before its create step runs: start it (and build
# the images) first.
scripts/testhosts build || exit 1

[ $# -gt 0 ] || set -- default
# Left by a run that was killed: nothing runs in the background now.
rm -f build/molecule-*.started

start_overlap() {
  local other=$overlap
  [ -n "$other" ] || return 0
  overlap=""
  rm -f "$(status_of "$other")"
  echo "==> molecule test -s $other, in the background from now on (output: $(log_of "$other"))"
  (
    started=$SECONDS
    if molecule test -s "$other" --destroy always; then
      echo "<== $other: passed in $((SECONDS - started))s"
      echo 0 >"$(status_of "$other")"
    else
      echo "<== $other: FAILED after $((SECONDS - started))s"
      echo 1 >"$(status_of "$other")"
    fi
  ) >"$(log_of "$other")" 2>&1 </dev/null &
  # Its PID: the fleet's verify waits for it before the releases and the drill (conftest.py).
  echo $! >"build/molecule-$other.started"
}

# `molecule test --destroy always`, one step at a time, with the overlap
# started after prepare (or when a step before it failed).
stepwise() {
  local scenario=$1 step
  for step in destroy syntax create prepare converge idempotence side-effect; do
    if ! molecule "$step" -s "$scenario"; then
      start_overlap
      molecule destroy -s "$scenario"
      return 1
    fi
    # Once the fleet's hosts and test peers (and the app image) are in place.
    [ "$step" = prepare ] && start_overlap
  done
  local rc=0
  molecule verify -s "$scenario" || rc=1
  molecule destroy -s "$scenario" || rc=1
  return $rc
}

failed=()
for scenario in "$@"; do
  echo "==> molecule test -s $scenario"
  started=$SECONDS
  # The disaster-recovery drill's measured figures (production scenario).
  rm -f build/drill-figures.txt
  if [ -n "$overlap" ]; then
    stepwise "$scenario"
  else
    molecule test -s "$scenario" --destroy always
  fi
  if [ $? -eq 0 ]; then
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
