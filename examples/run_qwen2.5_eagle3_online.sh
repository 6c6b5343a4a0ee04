#!/bin/bash
# An EAGLE-3 draft for Qwen2.5-7B-Instruct trained online on ShareGPT, with the hyper-parameters SpecForge
# uses for its online recipes (10 epochs, batch 1, lr 1e-4, max length 2048, TTT 7; reference:
# examples/run_qwen2_5_eagle3_online.sh, whose own target is the vision-language Qwen2.5-VL, which Eaglet
# does not support yet) and SpecForge's configs/qwen2.5-7b-eagle3.json (draft vocabulary 16000).
#
#   examples/run_qwen2.5_eagle3_online.sh [extra train-online flags]
set -euo pipefail
SCRIPT_DIR=$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")" &>/dev/null && pwd)
ROOT_DIR=$(dirname "$SCRIPT_DIR")
cd "$ROOT_DIR"
DENO=${DENO:-$(command -v deno || echo "npx -y deno@2.9.6")}

$DENO task prepare-data --dataset sharegpt --output-path cache/dataset

$DENO task train-online \
  --target-model-path Qwen/Qwen2.5-7B-Instruct \
  --draft-model-config configs/qwen2.5-7b-eagle3.json \
  --draft-preset eagle3 \
  --train-data-path cache/dataset/sharegpt_train.jsonl \
  --output-dir outputs/Qwen2.5-7B-eagle3 \
  --num-epochs 10 \
  --batch-size 1 \
  --learning-rate 1e-4 \
  --max-length 2048 \
  --chat-template qwen \
  --cache-dir cache \
  --ttt-length 7 \
  "$@"

$DENO task export --checkpoint outputs/Qwen2.5-7B-eagle3 --output-dir outputs/Qwen2.5-7B-eagle3-sglang --overwrite
