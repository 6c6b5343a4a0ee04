#!/bin/bash
# Eaglet's counterpart of SpecForge's examples/run_qwen3_dense_eagle3_online.sh: an EAGLE-3 draft for
# Qwen3-8B trained online on ShareGPT with SpecForge's hyper-parameters (10 epochs, batch 1, lr 1e-4, max
# length 2048, TTT 7, the qwen chat template, configs/qwen3-8b-eagle3.json, embedding key
# model.embed_tokens.weight). SpecForge shards the target over --target-tp-size GPUs; Eaglet runs it on one
# WebGPU device.
#
#   examples/run_qwen3_dense_eagle3_online.sh [extra train-online flags]
set -euo pipefail
SCRIPT_DIR=$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")" &>/dev/null && pwd)
ROOT_DIR=$(dirname "$SCRIPT_DIR")
cd "$ROOT_DIR"
DENO=${DENO:-$(command -v deno || echo "npx -y deno@2.9.6")}

$DENO task prepare-data --dataset sharegpt --output-path cache/dataset

$DENO task train-online \
  --target-model-path Qwen/Qwen3-8B \
  --draft-model-config configs/qwen3-8b-eagle3.json \
  --draft-preset eagle3 \
  --train-data-path cache/dataset/sharegpt_train.jsonl \
  --output-dir outputs/Qwen3-8B-eagle3 \
  --num-epochs 10 \
  --batch-size 1 \
  --learning-rate 1e-4 \
  --max-length 2048 \
  --chat-template qwen \
  --cache-dir cache \
  --embedding-key model.embed_tokens.weight \
  --ttt-length 7 \
  "$@"

$DENO task export --checkpoint outputs/Qwen3-8B-eagle3 --output-dir outputs/Qwen3-8B-eagle3-sglang --overwrite
