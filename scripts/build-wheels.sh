#!/usr/bin/env bash
# Fills ./wheelhouse/ with every wheel the app image installs, for the image's
# Python (Debian 12: CPython 3.11 on x86_64 glibc 2.36), checked against the
# hashes in the lock files. The image build then needs no index and no network.
#
#   scripts/build-wheels.sh          # wheels for app/requirements.lock and app/requirements-build.lock
#   scripts/build-wheels.sh --lock   # first regenerate both lock files from pyproject.toml
#
# The locks are resolved by pip-compile running on Debian 12's own python3
# (3.11.2, the image's interpreter): markers such as redis's
# `async-timeout; python_full_version < "3.11.3"` must be evaluated for the
# image, not for whichever Python runs the tests.
#
# Environment: WHEELHOUSE (default ./wheelhouse), PYTHON (default .venv/bin/python
# if present, else python3), WHEEL_GLIBC_MINOR (default 36: Debian 12's glibc 2.36).
set -euo pipefail

cd "$(dirname "$0")/.."
WHEELHOUSE="${WHEELHOUSE:-wheelhouse}"
GLIBC_MINOR="${WHEEL_GLIBC_MINOR:-36}"
if [ -z "${PYTHON:-}" ]; then
  if [ -x .venv/bin/python ]; then PYTHON=.venv/bin/python; else PYTHON=python3; fi
fi

# pip does not widen an explicit manylinux_2_NN platform to older glibc
# versions, so list every one the image's glibc can run (manylinux2014 widens
# itself to manylinux2010 and manylinux1).
platforms=(--platform manylinux2014_x86_64)
for minor in $(seq "$GLIBC_MINOR" -1 17); do
  platforms+=(--platform "manylinux_2_${minor}_x86_64")
done

lock() {
  local venv
  venv="$(mktemp -d)"
  trap 'rm -rf "$venv"' RETURN
  /usr/bin/python3 -m venv "$venv"
  "$venv/bin/pip" install --quiet --disable-pip-version-check "pip-tools>=7.4,<8"
  local common=(--quiet --generate-hashes --strip-extras --no-emit-index-url --no-emit-find-links)
  echo "build-wheels: locking app/requirements.lock" >&2
  "$venv/bin/pip-compile" "${common[@]}" --output-file app/requirements.lock pyproject.toml
  echo "build-wheels: locking app/requirements-build.lock" >&2
  "$venv/bin/pip-compile" "${common[@]}" --allow-unsafe --build-deps-for wheel --only-build-deps \
    --output-file app/requirements-build.lock pyproject.toml 2>/dev/null
}

case "${1:-}" in
  --lock) lock ;;
  "") ;;
  *) echo "usage: $0 [--lock]" >&2; exit 2 ;;
esac

mkdir -p "$WHEELHOUSE"
for lock in app/requirements.lock app/requirements-build.lock; do
  echo "build-wheels: $lock -> $WHEELHOUSE/" >&2
  # --only-binary: no sdist is ever built here or in the image. The platform
  # flags pick wheels for the image, not for this machine. --no-deps: the lock
  # already lists the whole closure, and --require-hashes rejects anything else.
  "$PYTHON" -m pip download --quiet --disable-pip-version-check \
    --require-hashes --no-deps --only-binary=:all: \
    "${platforms[@]}" --implementation cp --python-version 3.11 --abi cp311 \
    --dest "$WHEELHOUSE" --requirement "$lock"
done
echo "build-wheels: $(find "$WHEELHOUSE" -name '*.whl' | wc -l) wheels in $WHEELHOUSE/" >&2
