#!/bin/bash
# int4 at batch 1 in groups of 16-128, before (PROBE_SHORT_NIBBLES=0: the short-group kernel off) and after, on this
# machine and on an emulated AVX2 machine (.NET without AVX-512, libtorch's MKL, oneDNN and ATen limited to AVX2);
# one process per cell calling the layer for 5 s. docs/BENCHMARKS.md, "int4 at batch 1 in groups shorter than a step".
# Usage: scripts/bench-short-groups.sh > short-groups.txt   (after: dotnet build -c Release bench/QuantSharp.Bench)
set -e
cd "$(dirname "$0")/.."
B=bench/QuantSharp.Bench/bin/Release/net10.0/QuantSharp.Bench.dll
for machine in native avx2; do
  for round in 1 2; do
    for shape in 4096x4096 11008x4096; do
      if [ $machine = avx2 ]; then
        export DOTNET_EnableAVX512=0 MKL_ENABLE_INSTRUCTIONS=AVX2 ONEDNN_MAX_CPU_ISA=AVX2 ATEN_CPU_CAPABILITY=avx2
      else
        unset DOTNET_EnableAVX512 MKL_ENABLE_INSTRUCTIONS ONEDNN_MAX_CPU_ISA ATEN_CPU_CAPABILITY
      fi
      echo "$machine $shape float32 $(PROBE_SHAPES=$shape PROBE_ROWS=1 PROBE_PROFILE=0 dotnet $B small-linear 1 | tail -1 | sed 's/.*variant 0://')"
      for g in 16 32 64 128; do
        for short in 0 1; do
          echo "$machine $shape g$g short=$short $(PROBE_SHORT_NIBBLES=$short PROBE_GROUP=$g PROBE_SHAPES=$shape PROBE_ROWS=1 PROBE_PROFILE=2 dotnet $B small-linear 1 | tail -1 | sed 's/.*variant 2://')"
        done
      done
    done
  done
done
