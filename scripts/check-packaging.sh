#!/usr/bin/env bash
# Packaging check, run by .ci/run after the tests. Packs the repository (`dotnet pack -c Release -o DIR`), then,
# outside the repository, does what the README's "Use it from your project" section says:
#   1. a new console app references the QuantSharp package (local folder feed) and TorchSharp-cpu, quantizes a small
#      model (scripts/check-packaging/SmallModelCheck.cs) with `dotnet run`, then again from `dotnet publish -r linux-x64`;
#      The README's C# example is then pasted as the app's whole Program.cs, built and run.
#   2. `dotnet tool install --tool-path T --add-source DIR QuantSharp.Cli`, `T/quantsharp demo` and `T/quantsharp calibrate
#      compare --plot` (pictures through the tool's SkiaSharp native assets).
# On this machine's libstdc++ (Debian 12) the first tensor fails unless the package's libstdc++ fix reached the
# app's output, so running is the proof; on newer systems the checks that the output copies differ from the NuGet
# cache's copy (and that the cache copy is unchanged) still hold. Any failure stops the script with exit code 1.
#
# Version: each run packs a unique prerelease version (<Version>-ci.<UTC time>.<pid>), so the consumer's restore
# cannot pick a same-numbered QuantSharp left in the NuGet cache by an earlier run, and concurrent runs cannot
# delete each other's packages; the normal cache is kept (TorchSharp comes from it), and this run's own QuantSharp
# folders are removed from it on exit.
set -euo pipefail

repo=$(cd "$(dirname "$0")/.." && pwd)
started=$SECONDS
step() { printf '== [%3ds] %s\n' $((SECONDS - started)) "$*"; }
fail() { echo "check-packaging: FAILED: $*" >&2; exit 1; }
# Runs a command with its output in a log, shown only when it fails.
quiet() { "$@" > "$work/command.log" 2>&1 || { cat "$work/command.log" >&2; fail "$*"; }; }

export DOTNET_CLI_TELEMETRY_OPTOUT=1 DOTNET_NOLOGO=1 DOTNET_SKIP_FIRST_TIME_EXPERIENCE=1
version="$(dotnet msbuild "$repo/src/QuantSharp" -getProperty:Version)-ci.$(date -u +%Y%m%d%H%M%S).$$"
cache=$(dotnet nuget locals global-packages --list | sed 's/^global-packages: //')
cache=${cache%/}
work=$(mktemp -d)
cleanup() {
  rm -rf "$work" "$cache/quantsharp/$version" "$cache/quantsharp.cli/$version"
  rmdir "$cache/quantsharp" "$cache/quantsharp.cli" 2>/dev/null || true   # only when no other version is left
}
trap cleanup EXIT
torch_lib="runtimes/linux-x64/native/libLibTorchSharp.so"
cache_lib="$cache/torchsharp/0.107.0/$torch_lib"
cache_lib_sum=$(sha256sum "$cache_lib" 2>/dev/null || true)

# A copy of TorchSharp's native library in an output folder: it must not be the NuGet cache's bytes (the fix
# writes a patched copy; `cmp -s` is true only for identical files).
assert_patched() { [[ -f "$1" ]] || fail "missing $1"; ! cmp -s "$1" "$cache_lib" || fail "$1 is the unpatched library"; }

step "pack $version"
packages="$work/packages"
(cd "$repo" && quiet dotnet pack -c Release -o "$packages" -p:PackageVersion="$version")
expected="QuantSharp.$version.nupkg QuantSharp.Cli.$version.nupkg"
actual=$(cd "$packages" && ls | sort | tr '\n' ' ' | sed 's/ $//')
[[ "$actual" == "$expected" ]] || fail "dotnet pack made [$actual], expected [$expected] (tests, bench, examples are not packable)"
# Both packages declare MIT (PackageLicenseExpression) and carry the license text itself.
for nupkg in "$packages"/*.nupkg; do
  unzip -p "$nupkg" LICENSE | cmp -s - "$repo/LICENSE" || fail "$(basename "$nupkg") does not carry the repository's LICENSE at its root"
  unzip -p "$nupkg" '*.nuspec' | grep -qF '<license type="expression">MIT</license>' || fail "$(basename "$nupkg") does not declare the MIT license"
done

step "consumer app: new console project, QuantSharp $version + TorchSharp-cpu 0.107.0, dotnet run"
app="$work/app"
mkdir "$app" && cd "$app"
quiet dotnet new console --name QuantSharpConsumer --output . --no-update-check
quiet dotnet new nugetconfig --no-update-check
quiet dotnet nuget add source "$packages" --name quantsharp-local --configfile nuget.config
quiet dotnet add package QuantSharp --version "$version"
quiet dotnet add package TorchSharp-cpu --version 0.107.0
cp "$repo/scripts/check-packaging/SmallModelCheck.cs" .
echo 'return PackagingCheck.SmallModelCheck.Run(Console.Out);' > Program.cs
quiet dotnet build -c Release
out=$(dotnet run -c Release --no-build) || fail "consumer run (dotnet run): $out"
echo "   $out"
assert_patched "bin/Release/net10.0/$torch_lib"

step "consumer app: dotnet publish -r linux-x64, run the published app"
quiet dotnet publish -c Release -r linux-x64 -o "$work/publish"
out=$("$work/publish/QuantSharpConsumer") || fail "published consumer: $out"
echo "   $out"
assert_patched "$work/publish/libLibTorchSharp.so"

step "consumer app: the README's C# example as its whole Program.cs, dotnet run"
# The first ```csharp block of README.md, verbatim: a user pastes it into a new console app and runs it.
awk '/^```csharp$/ { inside = 1; next } /^```$/ { if (inside) exit } inside' "$repo/README.md" > Program.cs
rm SmallModelCheck.cs
quiet dotnet build -c Release
out=$(dotnet run -c Release --no-build) || fail "the README example (dotnet run): $out"
grep -qx "validation: passed" <<< "$out" || fail "the README example's report does not say 'validation: passed': $out"
[[ -s mynet.int4.safetensors && -s mynet.int4.recipe.json ]] || fail "the README example did not write mynet.int4.safetensors and mynet.int4.recipe.json"
echo "   README example: $(grep -E '^size: ' <<< "$out")"

step "tool: dotnet tool install --tool-path T --add-source DIR QuantSharp.Cli, T/quantsharp demo"
cd "$work"
tool="$work/tool"
quiet dotnet tool install --tool-path "$tool" --add-source "$packages" QuantSharp.Cli --version "$version"
installed="$tool/.store/quantsharp.cli/$version/quantsharp.cli/$version/tools/net10.0/any"
assert_patched "$installed/$torch_lib"
rc=0; "$tool/quantsharp" demo --json > demo.json || rc=$?
(( rc == 0 )) || { cat demo.json >&2; fail "quantsharp demo exited with $rc"; }
grep -qF "\"model\": \"$installed/Assets/mnist-cnn.safetensors\"" demo.json \
  || fail "the demo did not use the model installed with the tool: $(grep '"model"' demo.json)"
variants=6 # float32, float16, int8 per-channel, int4 group-32, w8a8, w8a8-dynamic
[[ $(grep -c '"name": ' demo.json) == "$variants" ]] || fail "the demo did not report $variants variants"
grep -oE '"accuracyPercent": [0-9.]+' demo.json | awk -v variants="$variants" '{ if ($2 < 95) bad = 1 } END { exit bad || NR != variants }' \
  || fail "a demo variant is below 95% accuracy: $(grep -oE '"accuracyPercent": [0-9.]+' demo.json | tr '\n' ' ')"
echo "   demo accuracies (%): $(grep -oE '"accuracyPercent": [0-9.]+' demo.json | awk '{ printf "%s ", $2 }')"

step "tool: T/quantsharp calibrate compare --plot (ScottPlot/SkiaSharp native assets from the tool package)"
rc=0; "$tool/quantsharp" calibrate compare --data bundled --samples 32 --plot "$work/plots" --json > compare.json || rc=$?
(( rc == 0 )) || { cat compare.json >&2; fail "quantsharp calibrate compare exited with $rc"; }
for layer in conv1 conv2 fc1 fc2; do
  png="$work/plots/histogram-$layer.png"
  [[ -s "$png" && -s "${png%.png}.svg" ]] || fail "calibrate compare did not write $png and its .svg"
  [[ "$(head -c 8 "$png" | od -An -tx1 | tr -d ' \n')" == "89504e470d0a1a0a" ]] || fail "$png is not a PNG"
done
echo "   calibrate compare: $(ls "$work/plots" | wc -l) pictures"

[[ "$(sha256sum "$cache_lib" 2>/dev/null || true)" == "$cache_lib_sum" ]] || fail "the NuGet cache's $cache_lib changed"
step "packaging checks passed"
