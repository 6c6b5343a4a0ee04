#!/bin/bash
# The offline counterpart of run_tinystories_eagle3_online.sh, small enough for a CPU (a few minutes on 2 cores
# with Mesa's lavapipe): the target runs ONCE over the data (prepare-hidden-states, compact storage), then the
# draft trains from those files without the target's layers (train-offline), is exported and evaluated.
#
#   examples/run_tinystories_eagle3_offline.sh [output dir, default out/tinystories-offline-example]
set -euo pipefail
SCRIPT_DIR=$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")" &>/dev/null && pwd)
ROOT_DIR=$(dirname "$SCRIPT_DIR")
cd "$ROOT_DIR"
DENO=${DENO:-$(command -v deno || echo "npx -y deno@2.9.6")}
OUT=${1:-out/tinystories-offline-example}
TARGET=../shared/models/tinystories-656K
[ -f "$TARGET/config.json" ] || TARGET=raincandy-u/TinyStories-656K

# 1. Self-distilled data, as in the online example.
$DENO run -A examples/tinystories_selfdistill.ts --target-model-path "$TARGET" --output-dir "$OUT/data" \
  --train-samples 64 --eval-samples 8 --continuation-tokens 48

# 2. Features, once per split (the default storage; see --help for the options). Re-running skips what exists.
for split in train eval; do
  $DENO task prepare-hidden-states \
    --target-model-path "$TARGET" \
    --data-path "$OUT/data/$split.jsonl" \
    --output-path "$OUT/features/$split" \
    --cache-dir "$OUT/cache" \
    --max-length 64
done

# 3. Offline training: the online example's settings, fed from the files.
$DENO task train-offline \
  --target-model-path "$TARGET" \
  --train-hidden-states-path "$OUT/features/train" \
  --eval-hidden-states-path "$OUT/features/eval" \
  --output-dir "$OUT/train" \
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

# 4. SGLang export, checked, and speculative decoding against the target.
$DENO task export --checkpoint "$OUT/train" --output-dir "$OUT/sglang-draft" --overwrite
$DENO task eval --target-model-path "$TARGET" --draft-model-path "$OUT/sglang-draft" \
  --data-path "$OUT/data/eval_prompts.jsonl" --num-steps 3 --max-new-tokens 48 --output-dir "$OUT/eval"
