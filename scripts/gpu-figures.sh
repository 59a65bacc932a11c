#!/usr/bin/env bash
# The GPU table of docs/gpu.md in one device run (the device tool's 15 minutes include the machine's
# start). Prepared on a machine without a GPU; run it where one is lent, from the repository root:
#   npm ci && npm run build && ../shared/gpu/pack.sh
#   device run, carry [".gpu", "dist"]:  bash scripts/gpu-figures.sh 1   then   bash scripts/gpu-figures.sh 2
# (a device command may run 10 minutes: part 1 is tiny-moe against transformers, part 2 the expert
# compute forms and the real-shape model). Every step writes to $OUT (default ./gpu-figures) and has its
# own time limit, so a slow step costs its own figures only.
set -uo pipefail
OUT=${OUT:-gpu-figures}
mkdir -p "$OUT"
# shellcheck disable=SC1091
source .gpu/setup.sh > "$OUT/setup.log" 2>&1
step() { # step NAME SECONDS command...
  local name=$1 secs=$2; shift 2
  echo "== $name: $*" | tee -a "$OUT/steps.log"
  local t0=$SECONDS
  timeout "$secs" "$@" > "$OUT/$name.txt" 2> "$OUT/$name.err"
  echo "   rc=$? in $((SECONDS - t0)) s" | tee -a "$OUT/steps.log"
}
nvidia-smi --query-gpu=name,memory.total,driver_version,pcie.link.gen.max,pcie.link.width.max --format=csv > "$OUT/gpu.csv" 2>&1
nproc > "$OUT/cpus.txt"

part=${1:-1}
if [ "$part" = 1 ]; then
# The peer: transformers on the same GPU, tiny-moe bf16, batch 1 and 16, 128 new tokens.
step transformers-tiny-moe 120 python3 scripts/transformers-decode.py --model models/tiny-moe --batch 1,16 --tokens 128
# moe-serve on webgpu: upload rates, resident decode at batch 1 and 16 (greedy checked against the CPU
# provider), and the offload modes at 25% on tiny-moe.
step bench-gpu-tiny-moe 420 node dist/src/cli/main.js bench gpu --tokens 128 --runs 2 --batch-size 16
else
# Expert compute forms on the GPU: which one is fastest there decides the webgpu defaults.
step decode-forms 120 node dist/src/cli/main.js bench decode --device webgpu --forms f32/f32,f16/f16,f32/int8,f32/int4 --runs 1 --tokens 64
# A real-shape model: Qwen3-30B-A3B's expert shape (2048 x 768, 128 experts, top-8), 4 layers, bf16.
step make-qwen3 90 node dist/scripts/make-model.js --preset qwen3-30b-a3b --layers 4 --out /tmp/qwen3-l4 --no-measure
step bench-gpu-qwen3-offload 330 node dist/src/cli/main.js bench gpu --model /tmp/qwen3-l4 --sections offload --tokens 16
fi
ls -la "$OUT"
