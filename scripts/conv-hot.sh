#!/usr/bin/env bash
# Where one convolution route spends its time, down to the instruction (docs/BENCHMARKS.md, stop 51): one process of
# `QuantSharp.Bench conv 1 1 custom` with CONV_PROFILE=ROUTE (that call alone for 5 s) under `perf record`, with the
# runtime's perf map and the JIT's listing of the methods matching PATTERN (DOTNET_JitDisasm, with code bytes) in the
# same process, so the offsets agree; prints the hottest symbols, then the hottest offsets of PATTERN's fully
# optimized code with the instructions around them.
#
# Usage: scripts/conv-hot.sh PATTERN ROUTE SHAPE BATCH [OUT=prefix]
#   e.g. scripts/conv-hot.sh '*<ByPairImages>b__0*' BFloat16Pairs:int8 64,64,56,56,1,1,0 2
# Needs perf, the .NET 10 SDK and python3 (standard library); builds bench/QuantSharp.Bench in Release first.
set -eu # not pipefail: the report pipelines end in head
pattern=$1 route=$2 shape=$3 batch=$4
repo=$(cd "$(dirname "$0")/.." && pwd)
out=${OUT:-$(mktemp -d /tmp/conv-hot.XXXXXX)/hot}
dotnet build -c Release "$repo/bench/QuantSharp.Bench" -v quiet -nologo > /dev/null
export MALLOC_MMAP_THRESHOLD_=268435456 MALLOC_TRIM_THRESHOLD_=1073741824
DOTNET_PerfMapEnabled=3 DOTNET_EnableWriteXorExecute=0 DOTNET_JitDisasm="$pattern" DOTNET_JitDisasmWithCodeBytes=1 \
  DOTNET_JitStdOutFile="$out.asm" CONV_PROFILE="$route" CONV_SHAPE="$shape" CONV_BATCHES="$batch" \
  perf record -q -e cpu-clock -o "$out.perf" dotnet "$repo/bench/QuantSharp.Bench/bin/Release/net10.0/QuantSharp.Bench.dll" conv 1 1 custom 2>&1 | grep "us per call" &
wait $!
# The process's id names its perf map: the busiest thread whose command is dotnet is the main one or a worker; the map
# is the process's, whose id is the smallest of its threads'.
pid=$(perf report -i "$out.perf" --sort pid 2>/dev/null | grep -o '[0-9]*:dotnet' | cut -d: -f1 | sort -n | head -1)
perf report -i "$out.perf" --sort dso,symbol 2>/dev/null | grep -v '^#' | grep % | awk '{$1=$1; print substr($0, 1, 170)}' | head -12
perf script -i "$out.perf" -F ip 2>/dev/null > "$out.ips"
python3 - "$pattern" "/tmp/perf-$pid.map" "$out.ips" "$out.asm" <<'PY'
import collections, re, sys
pattern, perfmap, ips, asm = sys.argv[1].strip('*'), sys.argv[2], sys.argv[3], sys.argv[4]
entries = [line.split(' ', 2) for line in open(perfmap)]
tier1 = [(int(a, 16), int(s, 16)) for a, s, n in entries if pattern in n and 'OptimizedTier1' in n]
if not tier1:
    sys.exit('no fully optimized code of %s in %s' % (pattern, perfmap))
base, size = tier1[-1]
counts = collections.Counter(int(l, 16) - base for l in open(ips) if l.strip() and 0 <= int(l, 16) - base < size)
listing = [p for p in open(asm).read().split('; Assembly listing for method') if '(Tier1' in p.split('\n')[0]][-1]
offset, code = 0, {}
for line in listing.split('\n'):
    m = re.match(r'\s+([0-9A-F]{2}(?:[0-9A-F]{2})*)\s+(\S.*)', line)
    if m and not line.strip().startswith(';'):
        code[offset] = m.group(2)
        offset += len(m.group(1)) // 2
print('code: %#x bytes in the map, %#x in the listing' % (size, offset))
starts = sorted(code)
for at, n in counts.most_common(4):
    print('%#x: %d samples' % (at, n))
    i = starts.index(max(s for s in starts if s <= at))
    for s in starts[max(0, i - 6):i + 3]:
        print('  %s%#06x %s' % ('>' if s == starts[i] else ' ', s, code[s]))
PY
