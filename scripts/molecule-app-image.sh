#!/usr/bin/env bash
# Builds the app image a Molecule scenario deploys and archives it where the
# app role looks for it (app_image_archive_dir, default build/images/):
#
#   scripts/molecule-app-image.sh [VERSION]     # default 0.1.0-molecule
#
# Idempotent and quick when nothing changed: the wheelhouse is built only when
# missing, `docker build` reuses its cached layers, and the archive is written
# again only when the image differs from the one archived (its id is kept in
# build/images/paydrop-VERSION.tar.id). Prints "archived ..." when it wrote one.
set -euo pipefail

REPO_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$REPO_DIR"
VERSION="${1:-0.1.0-molecule}"
IMAGE="paydrop:$VERSION"
ARCHIVE_DIR="build/images"
ARCHIVE="$ARCHIVE_DIR/paydrop-$VERSION.tar"

log() { printf 'molecule-app-image: %s\n' "$*" >&2; }

scripts/testhosts ensure-engine
# Built again when a lock file changed since (a wheelhouse from before a new
# dependency would fail the image build with "No matching distribution").
if ! compgen -G 'wheelhouse/*.whl' >/dev/null || [ app/requirements.lock -nt wheelhouse/.built ] \
   || [ app/requirements-build.lock -nt wheelhouse/.built ]; then
  log "building the wheelhouse (missing, or older than the lock files)"
  scripts/build-wheels.sh
  touch wheelhouse/.built
fi
# A fixed revision keeps the image id (and so the archive) the same across
# commits that do not change what the image is built from.
docker build --quiet -f app/Dockerfile --build-arg VERSION="$VERSION" \
  --build-arg REVISION=molecule -t "$IMAGE" . >/dev/null
id="$(docker image inspect --format '{{.Id}}' "$IMAGE")"
if [ -s "$ARCHIVE" ] && [ "$(cat "$ARCHIVE.id" 2>/dev/null)" = "$id" ]; then
  log "$ARCHIVE is current"
  exit 0
fi
mkdir -p "$ARCHIVE_DIR"
docker save "$IMAGE" -o "$ARCHIVE.tmp"
mv "$ARCHIVE.tmp" "$ARCHIVE"
printf '%s\n' "$id" >"$ARCHIVE.id"
echo "archived $IMAGE in $ARCHIVE"
