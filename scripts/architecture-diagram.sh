#!/usr/bin/env bash
# Renders docs/architecture.dot to docs/architecture.svg (`make docs`). With
# --check (`make lint`) it renders to a temporary file instead and fails when
# the checked-in SVG differs: the picture in the docs is the .dot as committed.
# dot comes from Debian's graphviz (scripts/install-system-deps.sh).
set -euo pipefail
cd "$(dirname "$0")/.."
source=docs/architecture.dot
svg=docs/architecture.svg

if ! command -v dot >/dev/null; then
  echo "architecture-diagram: dot is missing: install Debian's graphviz (scripts/install-system-deps.sh)" >&2
  exit 1
fi

if [ "${1:-}" = --check ]; then
  rendered=$(mktemp)
  trap 'rm -f "$rendered"' EXIT
  dot -Tsvg "$source" -o "$rendered"
  if ! cmp -s "$rendered" "$svg"; then
    echo "architecture-diagram: $svg is not what $source renders to: run 'make docs' and commit both" >&2
    exit 1
  fi
else
  dot -Tsvg "$source" -o "$svg"
fi
