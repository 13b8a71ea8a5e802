#!/usr/bin/env bash
# The batch-1 table of docs/BENCHMARKS.md ("Quantized layers"): 4096x4096 and 11008x4096 layers, weights int8 (per
# channel), int4 and uint4 (group 128), float16 and bfloat16, each timed by `quantsharp bench --batch 1 --json` against
# TorchSharp's float32 and bfloat16 `Linear` in the same process (warm-up, then the median of REPEATS calls, all cores).
# Every measurement runs RUNS times in separate processes, interleaved (run 1 of every row, then run 2, ...), so a
# burst of load on a shared machine spreads over the rows. Prints a markdown table: medians over the runs, the
# min-max of the float32 ratio, and the 1-minute load average seen before each run.
#
# Usage: scripts/bench-batch1.sh [RUNS] [REPEATS]      (defaults 3 and 30; about 15 s per measurement)
# Run it on an otherwise idle machine: at batch 1 both sides read their weights from memory, so other jobs move the
# ratios by several times. Needs the .NET 10 SDK and jq.
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
runs=${1:-3}
repeats=${2:-30}
command -v jq >/dev/null || { echo "bench-batch1.sh needs jq (apt-get install jq)" >&2; exit 1; }
dotnet build -c Release "$repo/src/QuantSharp.Cli" -v quiet -nologo > /dev/null
cli="$repo/src/QuantSharp.Cli/bin/Release/net10.0/QuantSharp.Cli.dll"
results=$(mktemp)
trap 'rm -f "$results"' EXIT
for run in $(seq "$runs"); do
  for shape in 4096x4096 11008x4096; do
    for qtype in int8 int4 uint4 float16 bfloat16; do
      load=$(cut -d' ' -f1 /proc/loadavg)
      dotnet "$cli" bench --shape "$shape" --batch 1 --qtype "$qtype" --repeats "$repeats" --json \
        | jq -c --argjson load "$load" '. + {load: $load}' >> "$results"
      echo "run $run/$runs: $shape $qtype done (load $load)" >&2
    done
  done
done
echo "Batch 1, $(date -u '+%Y-%m-%d %H:%M') UTC, $(nproc) cores, $runs runs of $repeats calls, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //')"
echo
jq -rs '
  def median: sort | if length % 2 == 1 then .[length / 2 | floor] else (.[length / 2 - 1] + .[length / 2]) / 2 end;
  def f(d): . * pow(10; d) | round / pow(10; d) | tostring;
  "| shape | qtype | group | runs | float32 ms | bfloat16 ms | quantized ms | vs float32 (median, min-max) | vs bfloat16 | weight GB/s | read GB/s | load |",
  "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
  (group_by([.shape, .qtype]) | sort_by(.[0] as $r | [$r.shape != "4096x4096", (["int8", "int4", "uint4", "float16", "bfloat16"] | index($r.qtype))])[]
   | "| \(.[0].shape) | \(.[0].qtype) | \(.[0].group_size // "-") | \(length) | \([.[].float32_ms] | median | f(3)) | \([.[].bfloat16_ms] | median | f(3)) | \([.[].quantized_ms] | median | f(3)) | **\([.[].speedup_vs_float32] | median | f(2))x** (\([.[].speedup_vs_float32] | min | f(2))-\([.[].speedup_vs_float32] | max | f(2))) | \([.[].speedup_vs_bfloat16] | median | f(2))x | \([.[].weight_gbps] | median | f(1)) | \([.[].memory_read_gbps] | median | f(1)) | \([.[].load] | min | f(1))-\([.[].load] | max | f(1)) |")
' "$results"
