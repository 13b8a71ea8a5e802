#!/bin/bash
# float16 weights at batch 1: the infinity/NaN test in a pass of its own (PROBE_FUSED_FINITE=0, as before stop 24), the
# test fused into the four-row kernel (PROBE_FUSED_FINITE=1 PROBE_SCALED_HALVES=0), and that with activations scaled by
# 2^112 (both 1, the default); float32 and bfloat16 weights alongside; on this machine and on an emulated AVX2
# machine (.NET without AVX-512, libtorch's MKL, oneDNN and ATen limited to AVX2); one process per cell calling the
# layer for 5 s. docs/BENCHMARKS.md, "float16 at batch 1 without a test pass of its own".
# Usage: scripts/bench-half-batch1.sh > half-batch1.txt   (after: dotnet build -c Release bench/QuantSharp.Bench)
set -e
cd "$(dirname "$0")/.."
B=bench/QuantSharp.Bench/bin/Release/net10.0/QuantSharp.Bench.dll
cell() { PROBE_SHAPES=$1 PROBE_ROWS=1 PROBE_PROFILE=$2 dotnet $B small-linear 1 | tail -1 | sed "s/.*variant $2://"; }
for machine in native avx2; do
  if [ $machine = avx2 ]; then
    export DOTNET_EnableAVX512=0 MKL_ENABLE_INSTRUCTIONS=AVX2 ONEDNN_MAX_CPU_ISA=AVX2 ATEN_CPU_CAPABILITY=avx2
  else
    unset DOTNET_EnableAVX512 MKL_ENABLE_INSTRUCTIONS ONEDNN_MAX_CPU_ISA ATEN_CPU_CAPABILITY
  fi
  for round in 1 2; do
    for shape in 64x800 1024x1024 4096x4096 11008x4096; do
      echo "$machine $shape float32 $(cell $shape 0)"
      echo "$machine $shape bfloat16 $(cell $shape 5)"
      echo "$machine $shape float16 separate-test $(PROBE_FUSED_FINITE=0 cell $shape 4)"
      echo "$machine $shape float16 fused-test $(PROBE_SCALED_HALVES=0 cell $shape 4)"
      echo "$machine $shape float16 fused-test+scaled $(cell $shape 4)"
    done
  done
done
