#!/usr/bin/env bash
# Before and after for convolution routes (docs/BENCHMARKS.md, stop 51): alternating processes of two builds of the
# bench, BASE and NEW (checkouts of the repo, e.g. `git worktree add /tmp/base SHA`), each process
# `QuantSharp.Bench conv 1 1 custom` on one shape with CONV_PAIR="Float:,PAIR" (blocks of 5 calls of each in turn, 40
# rounds), so every ratio is the route's median over float32's in the same process. Raw output in OUT-SHAPE-base|new-N.txt;
# then one line per layer, batch and route (ratio and median us per process, before | after), and a table per route of
# the before / after ranges.
#
# Usage: BASE=dir NEW=dir SHAPES="C,O,H,W,K,S,P[,G] ..." [BATCHES=1,8] [REPS=2] [PAIR=Auto:int8] [OUT=prefix] scripts/conv-ab.sh
# Needs the .NET 10 SDK and python3 (standard library). Run it on a quiet machine.
set -euo pipefail
: "${BASE:?set BASE to the checkout before}" "${NEW:?set NEW to the checkout after}" "${SHAPES:?set SHAPES}"
out=${OUT:-$(mktemp -d /tmp/conv-ab.XXXXXX)/run}
# libtorch's float32 convolutions reach their steady speed only with glibc's mmap threshold raised (docs/BENCHMARKS.md, stop 11).
export MALLOC_MMAP_THRESHOLD_=268435456 MALLOC_TRIM_THRESHOLD_=1073741824
for side in "$BASE" "$NEW"; do dotnet build -c Release "$side/bench/QuantSharp.Bench" -v quiet -nologo > /dev/null; done
for shape in $SHAPES; do
  for rep in $(seq "${REPS:-2}"); do
    for side in base new; do
      dir=$BASE; [ "$side" = new ] && dir=$NEW
      CONV_SHAPE="$shape" CONV_BATCHES="${BATCHES:-1,8}" CONV_BLOCK=5 CONV_PAIR="Float:,${PAIR:-Auto:int8}" \
        dotnet "$dir/bench/QuantSharp.Bench/bin/Release/net10.0/QuantSharp.Bench.dll" conv 1 1 custom > "$out-$shape-$side-$rep.txt" 2>&1
    done
  done
done
python3 - "$(dirname "$0")" "$out" <<'PY'
import collections, glob, sys
sys.dont_write_bytecode = True
sys.path.insert(0, sys.argv[1])
from conv_medians import medians
rows = collections.OrderedDict()
for name in sorted(glob.glob(sys.argv[2] + '-*.txt')):
    side = 'new' if name.rsplit('-', 2)[1] == 'new' else 'base'
    floats = {}
    for key, variant, us in medians(name):
        if variant == 'Float:':
            floats[key] = us
        else:
            rows.setdefault((key, variant), {}).setdefault(side, []).append((us / floats[key], us))
for (key, variant), d in rows.items():
    show = lambda side: ' '.join('%.2f (%.0f)' % r for r in d.get(side, []))
    print('%s b%d %s: before %s | after %s' % (key[0], key[1], variant, show('base'), show('new')))
span = lambda v: '%.2f' % min(v) if min(v) == max(v) else '%.2f-%.2f' % (min(v), max(v))
for variant in dict.fromkeys(v for _, v in rows):
    cells = {k: d for (k, v), d in rows.items() if v == variant}
    batches = sorted({b for _, b in cells})
    print('\n%s, before / after:\n| layer | %s |\n|---|%s' % (variant, ' | '.join('batch %d' % b for b in batches), '---|' * len(batches)))
    for layer in dict.fromkeys(l for l, _ in cells):
        print('| %s | %s |' % (layer.replace('custom ', ''), ' | '.join(
            '%s / %s' % (span([r[0] for r in cells[(layer, b)]['base']]), span([r[0] for r in cells[(layer, b)]['new']]))
            if (layer, b) in cells else '' for b in batches)))
PY
echo "raw outputs: $out-*.txt" >&2
