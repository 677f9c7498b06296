#!/usr/bin/env bash
# The GPU device check (issue 15), side by side in one run on a machine with CUDA and PyTorch + transformers:
#   eval tokens/s and perplexity, ours (fp32 and bf16, --device cuda) vs transformers (fp32, bf16) on the same random
#   LLaMA, the same tokens and the same strided windows; then our quantize time on the GPU.
# Run it where a published superquant and a .NET runtime are unpacked (see ../shared/notes/gpu-on-the-device.md):
#   SQ="dotnet /tmp/sq/superquant.dll" bench/gpu.sh OUT_DIR [--hidden 2048 --layers 22 ...]
# The tool finds PyTorch's libtorch by itself (no LD_LIBRARY_PATH); `doctor` prints which one it mapped.
set -euo pipefail
OUT=${1:?usage: SQ="dotnet superquant.dll" bench/gpu.sh OUT_DIR [model options for gpu_reference.py]}; shift
SQ=${SQ:-superquant}
HERE=$(cd "$(dirname "$0")" && pwd)
mkdir -p "$OUT"
$SQ doctor | tee "$OUT/doctor.txt"
python3 "$HERE/gpu_reference.py" --out "$OUT" "$@" | tee "$OUT/reference.jsonl"
for dtype in fp32 bf16; do
  $SQ eval -m "$OUT/model" --tokens "$OUT/tokens.txt" --context 512 --device cuda --dtype "$dtype" --json > /dev/null  # warm-up
  /usr/bin/time -f "%e" -o "$OUT/eval-$dtype.time" $SQ eval -m "$OUT/model" --tokens "$OUT/tokens.txt" --context 512 --device cuda --dtype "$dtype" --json > "$OUT/eval-$dtype.json"
done
head -c 20000 "$OUT/tokens.txt" > "$OUT/calib.txt"
/usr/bin/time -f "%e" -o "$OUT/quantize.time" $SQ quantize -m "$OUT/model" --calibration-tokens "$OUT/calib.txt" -o "$OUT/q.sqpk.safetensors" --device cuda --json > "$OUT/quantize.json" || echo "quantize failed: see $OUT/quantize.json" >&2
python3 - "$OUT" <<'PY'
import json, sys, os
out = sys.argv[1]
ref = [json.loads(l) for l in open(os.path.join(out, "reference.jsonl"))]
print(f"{'engine':<14}{'dtype':<10}{'perplexity':>16}{'tokens/s':>12}")
for r in ref:
    print(f"{r['engine']:<14}{r['dtype']:<10}{r['perplexity']:>16.4f}{r['tokens_per_s']:>12.0f}")
for d in ("fp32", "bf16"):
    e = json.load(open(os.path.join(out, f"eval-{d}.json")))
    s = float(open(os.path.join(out, f"eval-{d}.time")).read().split()[-1])
    print(f"{'superquant':<14}{d:<10}{e['perplexity']:>16.4f}{e['tokens_scored'] / e['seconds']:>12.0f}   (whole process {s:.1f} s)")
q = os.path.join(out, "quantize.time")
if os.path.exists(q):
    print(f"superquant quantize (super-aware W4 g128, z auto) on cuda: {open(q).read().split()[-1]} s whole process")
PY
