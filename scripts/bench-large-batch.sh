#!/usr/bin/env bash
# Re-runs the large-batch matrix of docs/BENCHMARKS.md ("Quantized layers", W8A8 at large batch) and prints a markdown
# table of medians. Each measurement is one `quantsharp bench ... --json` process (warm-up, then the median of
# --repeats calls of TorchSharp float32 Linear, bfloat16 Linear and the quantized layer, all in the same process);
# the ratios are computed within each process, and the table gives their median (min-max) over RUNS processes,
# with the 1-minute load average seen at each start.
#
# Usage: scripts/bench-large-batch.sh [RUNS] [REPEATS]        (defaults: 3 runs, 5 repeats)
# Environment: SHAPES (default "4096x4096 11008x4096"), BATCHES ("8 64 512"), QTYPES ("w8a8-dynamic w8a8-static"),
#              OUT (raw JSON lines; default a temporary file, kept and named at the end).
# Needs: the .NET 10 SDK, python3 (standard library only). Builds src/QuantSharp.Cli in Release first.
# Takes about 10-20 minutes on 2 cores with the defaults; run it on a quiet machine (the load column says how quiet).
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
runs=${1:-3}
repeats=${2:-5}
shapes=${SHAPES:-"4096x4096 11008x4096"}
batches=${BATCHES:-"8 64 512"}
qtypes=${QTYPES:-"w8a8-dynamic w8a8-static"}
out=${OUT:-$(mktemp /tmp/bench-large-batch.XXXXXX.jsonl)}

dotnet build -c Release "$repo/src/QuantSharp.Cli" > /dev/null
cli="$repo/src/QuantSharp.Cli/bin/Release/net10.0/QuantSharp.Cli"
: > "$out"
for run in $(seq 1 "$runs"); do
  for shape in $shapes; do
    for batch in $batches; do
      for qtype in $qtypes; do
        load=$(cut -d' ' -f1 /proc/loadavg)
        # One compact JSON object per line, with the load average added.
        "$cli" bench --shape "$shape" --batch "$batch" --qtype "$qtype" --repeats "$repeats" --json \
          | python3 -c 'import json,sys; o=json.load(sys.stdin); o["load"]=float(sys.argv[1]); print(json.dumps(o))' "$load" >> "$out"
        echo "run $run/$runs $shape b$batch $qtype done (load $load)" >&2
      done
    done
  done
done

python3 - "$out" <<'PY'
import json, statistics, sys
rows = {}
for line in open(sys.argv[1]):
    o = json.loads(line)
    rows.setdefault((o["shape"], o["batch"], o["qtype"]), []).append(o)
def med(xs): return statistics.median(xs)
def rng(xs): return f"{min(xs):.2f}-{max(xs):.2f}"
print("| shape | batch | qtype | runs | float32 ms | bfloat16 ms | quantized ms | vs float32 | vs bfloat16 (median, min-max) | load |")
print("|---|---:|---|---:|---:|---:|---:|---:|---:|---:|")
shape_order = {s: i for i, s in enumerate(dict.fromkeys(k[0] for k in rows))}
for key in sorted(rows, key=lambda k: (shape_order[k[0]], k[1], k[2])):
    rs = rows[key]
    f32 = [r["float32_ms"] for r in rs]; b16 = [r["bfloat16_ms"] for r in rs]; q = [r["quantized_ms"] for r in rs]
    s32 = [r["speedup_vs_float32"] for r in rs]; s16 = [r["speedup_vs_bfloat16"] for r in rs]
    load = [r["load"] for r in rs]
    print(f"| {key[0]} | {key[1]} | {key[2]} | {len(rs)} | {med(f32):.2f} | {med(b16):.2f} | {med(q):.2f} | "
          f"{med(s32):.2f}x | **{med(s16):.2f}x** ({rng(s16)}) | {min(load):.0f}-{max(load):.0f} |")
PY
echo "raw measurements: $out" >&2
