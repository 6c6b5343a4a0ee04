#!/bin/bash
# Eaglet's counterpart of SpecForge's examples/run_llama3_eagle3_online.sh: an EAGLE-3 draft for
# Llama-3.1-8B-Instruct trained online on ShareGPT, with SpecForge's hyper-parameters (2 epochs, batch 2,
# lr 1e-4, max length 2048, TTT 7, the llama3 chat template, configs/llama3-8B-eagle3.json).
# SpecForge runs it on 8 GPUs with torchrun; Eaglet runs the target and the draft on one WebGPU device, so
# there is no --tp-size / --nproc_per_node (a GPU with ~40 GB or more holds the bf16 target and the draft).
#
#   examples/run_llama3_eagle3_online.sh [extra train-online flags, e.g. --max-num-steps 100]
#
# --draft-preset eagle3 keeps SpecForge's EAGLE-3 exactly (random lm_head, KL loss); without it and without
# --draft-model-config, Eaglet's default preset trains an EAGLE-3.1 draft with the LK loss (README, Online training).
#
# DENO overrides the Deno command (default: deno on PATH, else npx -y deno@2.9.6).
set -euo pipefail
SCRIPT_DIR=$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")" &>/dev/null && pwd)
ROOT_DIR=$(dirname "$SCRIPT_DIR")
cd "$ROOT_DIR"
DENO=${DENO:-$(command -v deno || echo "npx -y deno@2.9.6")}

# 1. ShareGPT → conversations jsonl (cache/dataset/sharegpt_train.jsonl), downloaded through the hub.
$DENO task prepare-data --dataset sharegpt --output-path cache/dataset

# 2. Online training; every checkpoint (epoch_E_step_S) is an SGLang draft directory.
$DENO task train-online \
  --target-model-path meta-llama/Llama-3.1-8B-Instruct \
  --draft-model-config configs/llama3-8B-eagle3.json \
  --draft-preset eagle3 \
  --train-data-path cache/dataset/sharegpt_train.jsonl \
  --output-dir outputs/llama3-8b-eagle3 \
  --num-epochs 2 \
  --batch-size 2 \
  --learning-rate 1e-4 \
  --max-length 2048 \
  --chat-template llama3 \
  --cache-dir cache \
  --ttt-length 7 \
  "$@"

# 3. The serving copy (bf16), checked.
$DENO task export --checkpoint outputs/llama3-8b-eagle3 --output-dir outputs/llama3-8b-eagle3-sglang --overwrite
echo "serve: python3 -m sglang.launch_server --model meta-llama/Llama-3.1-8B-Instruct --speculative-algorithm EAGLE3 \\"
echo "  --speculative-draft-model-path outputs/llama3-8b-eagle3-sglang --speculative-num-steps 3 \\"
echo "  --speculative-eagle-topk 1 --speculative-num-draft-tokens 4"
