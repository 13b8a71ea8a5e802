#!/usr/bin/env bash
# Convolution routes paired with libtorch's float32 layer, one process per order (docs/BENCHMARKS.md, stop 44): for each
# entry of ORDERS (";"-separated, each a CONV_PAIR list without its leading "Float:"), one process of
# `QuantSharp.Bench conv 1 1 FILTER` with CONV_PAIR="Float:,ENTRY" (blocks of BLOCK calls of each variant in turn, 40
# rounds; see bench/QuantSharp.Bench/ConvBench.cs), raw output in OUT-N.txt; then one line per layer and batch: float32's
# median time per process and each variant's median over float32's in the same process, one figure per process.
#
# Usage: ORDERS="Auto:int8,FailedCheckRule:int8;FailedCheckRule:int8,Auto:int8" [FILTER=substring] [SHAPE=C,O,H,W,K,S,P[,G]]
#        [BATCHES=1,8] [BLOCK=5] [REPS=1] [OUT=prefix] [ENVX="VAR=value ..."] [ABS=1] scripts/conv-pairs.sh
# ABS=1 also prints each variant's median time in us per process, to see which side moved (on the Zen 4 VM a route's
# time moved by up to 2x between identical processes: docs/BENCHMARKS.md, stop 46).
# SHAPE times one convolution of that shape (CONV_SHAPE) instead of the bench's list. Needs the .NET 10 SDK and python3
# (standard library); builds bench/QuantSharp.Bench in Release first. Run it on a quiet machine.
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
: "${ORDERS:?set ORDERS, e.g. ORDERS=\"Auto:int8\"}"
out=${OUT:-$(mktemp -d /tmp/conv-pairs.XXXXXX)/run}
dotnet build -c Release "$repo/bench/QuantSharp.Bench" -v quiet -nologo > /dev/null
bench="$repo/bench/QuantSharp.Bench/bin/Release/net10.0/QuantSharp.Bench.dll"
# libtorch's float32 convolutions reach their steady speed only with glibc's mmap threshold raised (docs/BENCHMARKS.md, stop 11).
export MALLOC_MMAP_THRESHOLD_=268435456 MALLOC_TRIM_THRESHOLD_=1073741824
IFS=';' read -ra orders <<< "$ORDERS"
n=0
files=()
for rep in $(seq "${REPS:-1}"); do
  for order in "${orders[@]}"; do
    n=$((n + 1))
    file="$out-$n.txt"
    files+=("$file")
    # One shape: CONV_SHAPE, whose case names all start with "custom"; else the bench's list, filtered.
    shape=() filter=${FILTER:-}
    if [ -n "${SHAPE:-}" ]; then shape=(CONV_SHAPE="$SHAPE"); filter=custom; fi
    env ${ENVX:-} "${shape[@]}" CONV_BATCHES="${BATCHES:-1,8}" CONV_BLOCK="${BLOCK:-5}" CONV_PAIR="Float:,$order" \
      dotnet "$bench" conv 1 1 "$filter" > "$file" 2>&1
  done
done
ABS=${ABS:-0} python3 - "$repo/scripts" "${files[@]}" <<'PY'
import collections, os, sys
sys.dont_write_bytecode = True
sys.path.insert(0, sys.argv[1])
from conv_medians import medians
absolute = os.environ['ABS'] == '1'
rows = collections.OrderedDict()
for name in sys.argv[2:]:
    floats = {}
    for key, variant, us in medians(name):
        cells = rows.setdefault(key, collections.OrderedDict())
        if variant == 'Float:':
            floats[key] = us
            cells.setdefault('float us', []).append('%.0f' % us)
        else:
            cells.setdefault(variant, []).append('%.2f' % (us / floats[key]))
            if absolute:
                cells.setdefault(variant + ' us', []).append('%.0f' % us)
for (layer, batch), cells in rows.items():
    print('%s b%d: %s' % (layer, batch, '; '.join('%s %s' % (v, '/'.join(x)) for v, x in cells.items())))
PY
echo "raw outputs: $out-*.txt" >&2
