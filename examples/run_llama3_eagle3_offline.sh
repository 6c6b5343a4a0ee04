#!/bin/bash
# Eaglet's counterpart of SpecForge's examples/run_llama3_eagle3_offline.sh: Llama-3.1-8B-Instruct's hidden
# states on ShareGPT captured once (prepare-hidden-states), then an EAGLE-3 draft trained from disk
# (train-offline) with SpecForge's hyper-parameters (global batch 16 = batch 1 × 16 accumulation steps,
# lr 5e-5). SpecForge stores bf16 aux + final hidden states, 32 KiB per token for this target (64 MiB per
# 2048-token sample); Eaglet's default storage (the README's offline section) takes a fraction of that.
#
#   examples/run_llama3_eagle3_offline.sh [extra train-offline flags, e.g. --max-num-steps 100]
#
# Several GPUs or machines can share step 2: run it N times with --shard i/N (i = 0..N-1) on the same
# --output-path (a shared file system); each writes only its rows, and any re-run only completes what is missing.
# --draft-preset eagle3 keeps SpecForge's EAGLE-3 exactly (random lm_head, KL loss); without it and without
# --draft-model-config, Eaglet's default preset trains an EAGLE-3.1 draft with the LK loss (README, Online training).
#
# DENO overrides the Deno command (default: deno on PATH, else npx -y deno@2.9.6).
set -euo pipefail
SCRIPT_DIR=$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")" &>/dev/null && pwd)
ROOT_DIR=$(dirname "$SCRIPT_DIR")
cd "$ROOT_DIR"
DENO=${DENO:-$(command -v deno || echo "npx -y deno@2.9.6")}
TARGET=meta-llama/Llama-3.1-8B-Instruct

# 1. ShareGPT → conversations jsonl (cache/dataset/sharegpt_train.jsonl), downloaded through the hub.
$DENO task prepare-data --dataset sharegpt --output-path cache/dataset

# 2. The target runs once over the data; the files are resumable (a killed run continues where it stopped).
$DENO task prepare-hidden-states \
  --target-model-path "$TARGET" \
  --draft-model-config configs/llama3-8B-eagle3.json \
  --data-path cache/dataset/sharegpt_train.jsonl \
  --output-path cache/hidden_states/llama3-8b-sharegpt \
  --chat-template llama3 \
  --max-length 2048 \
  --batch-size 8 \
  --cache-dir cache

# 3. Offline training from the files; every checkpoint (epoch_E_step_S) is an SGLang draft directory.
$DENO task train-offline \
  --target-model-path "$TARGET" \
  --draft-model-config configs/llama3-8B-eagle3.json \
  --draft-preset eagle3 \
  --train-hidden-states-path cache/hidden_states/llama3-8b-sharegpt \
  --output-dir outputs/llama3-8b-eagle3-offline \
  --num-epochs 10 \
  --batch-size 1 \
  --draft-accumulation-steps 16 \
  --learning-rate 5e-5 \
  --max-length 2048 \
  --ttt-length 7 \
  "$@"

# 4. The serving copy (bf16), checked.
$DENO task export --checkpoint outputs/llama3-8b-eagle3-offline --output-dir outputs/llama3-8b-eagle3-offline-sglang \
  --overwrite
echo "serve: python3 -m sglang.launch_server --model $TARGET --speculative-algorithm EAGLE3 \\"
echo "  --speculative-draft-model-path outputs/llama3-8b-eagle3-offline-sglang --speculative-num-steps 3 \\"
echo "  --speculative-eagle-topk 1 --speculative-num-draft-tokens 4"
