# Sourced by fetch-mnist.sh and fetch-fashion-mnist.sh: the four IDX files of an MNIST-style data set and their
# check against the caller's SHA256 table (an associative array declared before calling verify).
FILES=(train-images-idx3-ubyte train-labels-idx1-ubyte t10k-images-idx3-ubyte t10k-labels-idx1-ubyte)

verify() { # verify <dir>: 0 when all four files exist with the expected hash
  local dir="$1" f
  for f in "${FILES[@]}"; do
    [[ -f "$dir/$f" ]] || return 1
    [[ "$(sha256sum "$dir/$f" | cut -d' ' -f1)" == "${SHA256[$f]}" ]] || return 1
  done
}
