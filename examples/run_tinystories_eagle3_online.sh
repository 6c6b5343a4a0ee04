#!/bin/bash
# The small recipe that runs anywhere, CPU included (about 5 minutes on 2 cores with Mesa's lavapipe):
# tinystories-656K (../shared/models/tinystories-656K, else raincandy-u/TinyStories-656K from the hub)
# writes its own training data, an EAGLE-3 draft is trained online against it, exported for SGLang and
# evaluated by speculative decoding. Every step is a task on its own, as in the large recipes; `deno task demo`
# runs the same chain in one process.
#
#   examples/run_tinystories_eagle3_online.sh [output dir, default out/tinystories-example]
set -euo pipefail
SCRIPT_DIR=$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")" &>/dev/null && pwd)
ROOT_DIR=$(dirname "$SCRIPT_DIR")
cd "$ROOT_DIR"
DENO=${DENO:-$(command -v deno || echo "npx -y deno@2.9.6")}
OUT=${1:-out/tinystories-example}
TARGET=../shared/models/tinystories-656K
[ -f "$TARGET/config.json" ] || TARGET=raincandy-u/TinyStories-656K

# 1. Self-distilled data: 72 openings sampled by the target, 48 greedy target tokens each (64 train, 8 eval;
#    eval_prompts.jsonl holds the 8 held-out openings alone).
$DENO run -A examples/tinystories_selfdistill.ts --target-model-path "$TARGET" --output-dir "$OUT/data" \
  --train-samples 64 --eval-samples 8 --continuation-tokens 48

# 2. Online training (SpecForge's flags; the demo's sizes).
$DENO task train-online \
  --target-model-path "$TARGET" \
  --train-data-path "$OUT/data/train.jsonl" \
  --eval-data-path "$OUT/data/eval.jsonl" \
  --output-dir "$OUT/train" \
  --cache-dir "$OUT/cache" \
  --max-length 64 \
  --draft-vocab-size 512 \
  --num-epochs 14 \
  --batch-size 4 \
  --learning-rate 5e-3 \
  --warmup-ratio 0.05 \
  --ttt-length 4 \
  --log-interval 16 \
  --eval-interval 112 \
  --save-interval 0

# 3. SGLang export, checked.
$DENO task export --checkpoint "$OUT/train" --output-dir "$OUT/sglang-draft" --overwrite

# 4. Speculative decoding: acceptance length and speedup, report in $OUT/eval.
$DENO task eval --target-model-path "$TARGET" --draft-model-path "$OUT/sglang-draft" \
  --data-path "$OUT/data/eval_prompts.jsonl" --num-steps 3 --max-new-tokens 48 --output-dir "$OUT/eval"
