#!/usr/bin/env bash
# Packs what a GPU machine without network needs to run bench/gpu/run.sh: this node binary,
# the built project (dist/, bin/, configs/, the shipped token checkpoint, the webgpu tests)
# and the node_modules it runs with, less native TensorFlow (the GPU run is WebGPU's),
# other platforms' Dawn builds, compilers and docs. One xz tarball (under 60 MiB).
#   bench/gpu/pack.sh [OUT.tar.xz]      (default .gpu/sinklm-gpu.tar.xz; .gpu/ is ignored)
# On the GPU machine: tar xJf sinklm-gpu.tar.xz && sinklm-gpu/bench/gpu/run.sh
set -euo pipefail
cd "$(dirname "$0")/../.."
out="${1:-.gpu/sinklm-gpu.tar.xz}"
stage="$(mktemp -d)/sinklm-gpu"
mkdir -p "$stage/checkpoints" "$(dirname "$out")"
npx tsc -p tsconfig.json
cp -r dist bin configs bench package.json tsconfig.json vitest.config.ts "$stage/"
# The webgpu tests run from source (vitest compiles them): the sources they import come too.
cp -r core model train infer data experiments cli index.ts "$stage/"
mkdir -p "$stage/test" && cp test/webgpu*.test.ts test/cli.ts test/helpers.ts "$stage/test/"
cp -r checkpoints/token checkpoints/test_stream.txt "$stage/checkpoints/"
cp "$(command -v node)" "$stage/node"
tar -C . -cf - \
  --exclude='node_modules/@tensorflow/tfjs-node' --exclude='node_modules/@tensorflow/tfjs-node-gpu' \
  --exclude='node_modules/webgpu/dist/darwin-*' --exclude='node_modules/webgpu/dist/win32-*' \
  --exclude='node_modules/webgpu/dist/linux-arm64' --exclude='node_modules/typescript' \
  --exclude='node_modules/wabt' --exclude='node_modules/@types' --exclude='node_modules/.cache' \
  --exclude='*.map' --exclude='*.md' --exclude='*.d.ts' --exclude='*.es2017.js' --exclude='*.min.js' \
  --exclude='node_modules/@tensorflow/*/dist/*.esm.js' --exclude='node_modules/@tensorflow/*/dist/*.fesm.js' \
  node_modules | tar -C "$stage" -xf -
# tfjs packages run from their one Node bundle each (package.json "main"); the rest of dist/
# is browser bundles and per-module builds. tokenizers: this platform's addon only.
find "$stage"/node_modules/@tensorflow/*/dist -mindepth 1 -maxdepth 1 ! -name '*.node.js' ! -name '*.wasm' -exec rm -rf {} +
find "$stage"/node_modules/tokenizers -name 'tokenizers.*.node' ! -name 'tokenizers.linux-x64-gnu.node' -delete
du -sm "$stage" | cut -f1 | xargs -I{} echo "staged {} MiB" >&2
tar -C "$(dirname "$stage")" -cf - sinklm-gpu | xz -6 -T0 > "$out"
rm -rf "$(dirname "$stage")"
echo "$out: $(du -m "$out" | cut -f1) MiB"
