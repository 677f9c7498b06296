#!/usr/bin/env bash
# No-op incremental build overhead of SuperQuant.Build: two identical class libraries, one importing the SuperQuant
# props/targets with a manifest (stories260K, 8-bit), one without; after a first full build, N no-op builds of each
# are timed alternately in this one run. Target: under 0.5 s added. Needs ../shared/models/stories260K beside the repo
# and a prior `dotnet build` of the solution (for the tool and the task).
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
n=${1:-5}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
tool="$repo/src/SuperQuant.Cli/bin/Debug/net10.0/superquant.dll"
task="$repo/src/SuperQuant.Build/bin/Debug/net10.0/SuperQuant.Build.dll"
[ -f "$tool" ] && [ -f "$task" ] || { echo "build the solution first (dotnet build SuperQuant.Build.sln)"; exit 1; }

for kind in plain superquant; do
  mkdir -p "$work/$kind"
  echo 'namespace P; public static class C { }' > "$work/$kind/C.cs"
  if [ "$kind" = plain ]; then
    printf '<Project Sdk="Microsoft.NET.Sdk"><PropertyGroup><TargetFramework>net10.0</TargetFramework></PropertyGroup></Project>\n' > "$work/$kind/P.csproj"
  else
    mkdir -p "$work/$kind/data"
    cp "$repo/samples/OnDeviceStories/data/"*.txt "$work/$kind/data/"
    sed -e "s#\.\./\.\./\.\./shared/models/stories260K/stories260K.bin#$repo/../shared/models/stories260K/stories260K.bin#" \
      "$repo/samples/OnDeviceStories/quantize.yaml" > "$work/$kind/quantize.yaml"
    cat > "$work/$kind/P.csproj" <<XML
<Project Sdk="Microsoft.NET.Sdk">
  <Import Project="$repo/build/SuperQuant.Build.props" />
  <PropertyGroup>
    <TargetFramework>net10.0</TargetFramework>
    <SuperQuantToolPath>$tool</SuperQuantToolPath>
    <SuperQuantTaskAssembly>$task</SuperQuantTaskAssembly>
  </PropertyGroup>
  <ItemGroup><SuperQuantAllowOutside Include="$repo/../shared/models" /></ItemGroup>
  <Import Project="$repo/build/SuperQuant.Build.targets" />
</Project>
XML
  fi
  (cd "$work/$kind" && dotnet build -nologo -v:q > "$work/$kind.first.log" 2>&1) || { cat "$work/$kind.first.log"; exit 1; }
done

declare -A total=([plain]=0 [superquant]=0)
for i in $(seq 1 "$n"); do
  for kind in plain superquant; do
    start=$(date +%s.%N)
    (cd "$work/$kind" && dotnet build -nologo -v:q --no-restore > /dev/null 2>&1)
    end=$(date +%s.%N)
    total[$kind]=$(awk -v t="${total[$kind]}" -v a="$start" -v b="$end" 'BEGIN { print t + b - a }')
  done
done
awk -v n="$n" -v p="${total[plain]}" -v s="${total[superquant]}" 'BEGIN {
  printf "no-op build, mean of %d (alternating):  without SuperQuant %.3f s   with SuperQuant %.3f s   added %.3f s (target < 0.5 s)\n", n, p / n, s / n, (s - p) / n }'
