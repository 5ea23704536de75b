#!/usr/bin/env bash
# The GPU check on a machine with a real GPU and no network, from what bench/gpu/pack.sh
# packed (this script runs inside the unpacked folder): doctor, the webgpu test suite,
# bench train on webgpu at S1 (pythia-14m shape, B 16, T 256), S2 (Pythia-160M, B 8, T 512)
# and S3 (Pythia-14M, V 50304, B 8, T 2048), and bench decode at 1024 and 4096 keys. Each
# part's JSON and log go to .gpu-run/; one file of figures (default gpu-figures.json)
# gathers them. A part that fails is recorded with its exit code and last stderr line, and
# the rest still run.
#   bench/gpu/run.sh [OUT.json]
# NVIDIA's Vulkan driver needs the GL vendor-neutral libraries: put their .deb files in
# .gl/ beside this folder's bin/ (../shared/gpu/fetch-gl.sh gets them) and they are unpacked.
set -uo pipefail
cd "$(dirname "$0")/../.."
out="${1:-gpu-figures.json}"
export PATH="$PWD:$PATH" XDG_RUNTIME_DIR="${XDG_RUNTIME_DIR:-/tmp}"
if ls .gl/*.deb >/dev/null 2>&1; then for f in .gl/*.deb; do dpkg -x "$f" /; done; ldconfig; fi
nv=/usr/local/nvidia/share/vulkan/icd.d/nvidia_icd.json
[ -z "${VK_ICD_FILENAMES:-}" ] && [ -e "$nv" ] && export VK_DRIVER_FILES="$nv" VK_ICD_FILENAMES="$nv"
mkdir -p .gpu-run
part() { # name, command...: stdout -> .gpu-run/NAME.json, stderr -> .gpu-run/NAME.log
  local name="$1"; shift
  local t0=$SECONDS
  "$@" > ".gpu-run/$name.json" 2> ".gpu-run/$name.log"
  echo "{\"part\":\"$name\",\"rc\":$?,\"seconds\":$((SECONDS - t0))}" >> .gpu-run/parts.jsonl
  echo "bench/gpu: $name done ($((SECONDS - t0)) s)" >&2
}
rm -f .gpu-run/parts.jsonl
part doctor node bin/sinklm doctor --backend webgpu --json
part tests node node_modules/vitest/vitest.mjs run test/webgpu.test.ts test/webgpu-attention.test.ts test/webgpu-cli.test.ts --reporter=json
part train-s1 node bin/sinklm bench train --backend webgpu --config configs/pythia-14m.json --steps 10 --warmup 3 --json
part train-s2 node bin/sinklm bench train --backend webgpu --config bench/gpu/pythia-160m.json --steps 10 --warmup 3 --json
part train-s3 node bin/sinklm bench train --backend webgpu --config bench/gpu/pythia-14m-2048.json --steps 5 --warmup 2 --json
part decode node bin/sinklm bench decode --backend webgpu --caches 1024,4096 --policies sinks,dense --json
node bench/gpu/gather.mjs .gpu-run "$out"
