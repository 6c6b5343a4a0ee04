/**
 * Training throughput of the EAGLE-3 draft step (lib/models/eagle3.ts): teacher, K-step TTT forward, losses and
 * the full backward, without the optimizer (timed by the optimizer's own bench). Inputs are random (aux states,
 * teacher logits, ids); the speed does not depend on their values. Tokens/s counts B·T tokens per step.
 */
import type { Gpu } from "../gpu/device.ts";
import { LimitError } from "../gpu/errors.ts";
import { Tensor } from "../tensor.ts";
import type { VocabMapping } from "../data/vocab.ts";
import { parseDraftConfig } from "../models/draft_config.ts";
import { buildEagle3Step, Eagle3Draft } from "../models/eagle3.ts";
import { mulberry32 } from "../data/random.ts";
import { type BenchOptions, type BenchRow, timeProgram } from "./types.ts";

interface Case {
  name: string;
  hidden: number;
  intermediate: number;
  heads: number;
  kvHeads: number;
  headDim: number;
  vocab: number;
  draftVocab: number;
  batch: number;
  seqLen: number;
  ttt: number;
}

/** A mapping onto the lowest `draftVocab` target ids. */
function prefixMapping(draftVocab: number, vocab: number): VocabMapping {
  const t2d = new Uint8Array(vocab);
  t2d.fill(1, 0, draftVocab);
  return {
    draftVocabSize: draftVocab,
    targetVocabSize: vocab,
    d2t: new BigInt64Array(draftVocab),
    t2d,
    draftToTarget: Int32Array.from({ length: draftVocab }, (_, i) => i),
  };
}

/** Bytes of the largest single tensor of a case (lm_head, embedding or the [B·T, Vd] logits). */
function largestTensorBytes(c: Case): number {
  return Math.max(4 * c.draftVocab * c.hidden, embeddingBytes(c), 4 * c.batch * c.seqLen * c.draftVocab);
}

/** Big vocabularies get a bf16 embedding (as targets store it), zero-filled: its values do not change the speed. */
function bigEmbedding(c: Case): boolean {
  return c.vocab * c.hidden > 2 ** 24;
}

function embeddingBytes(c: Case): number {
  return (bigEmbedding(c) ? 2 : 4) * c.vocab * c.hidden;
}

async function runCase(gpu: Gpu, c: Case, reps: number): Promise<BenchRow> {
  const shape =
    `H${c.hidden} I${c.intermediate} nh${c.heads}/${c.kvHeads} Vd${c.draftVocab} B${c.batch} T${c.seqLen} K${c.ttt}`;
  const row = { group: "eagle3", name: `train step fwd+bwd (${c.name})`, shape };
  const max = gpu.limits.maxStorageBufferBindingSize;
  if (largestTensorBytes(c) > max) {
    return {
      ...row,
      ms: NaN,
      note:
        `skipped: its largest tensor (${(largestTensorBytes(c) / 2 ** 20).toFixed(0)} MiB) exceeds this ` +
        `device's maxStorageBufferBindingSize (${(max / 2 ** 20).toFixed(0)} MiB)`,
    };
  }
  const cfg = parseDraftConfig({
    hidden_size: c.hidden,
    intermediate_size: c.intermediate,
    num_attention_heads: c.heads,
    num_key_value_heads: c.kvHeads,
    head_dim: c.headDim,
    vocab_size: c.vocab,
    draft_vocab_size: c.draftVocab,
    max_position_embeddings: 4096,
  }, `bench ${c.name}`);
  const rand = mulberry32(1);
  const N = c.batch * c.seqLen;
  const randoms = (n: number, scale: number) =>
    Float32Array.from({ length: n }, () => (2 * rand() - 1) * scale);
  const embedding = bigEmbedding(c)
    ? Tensor.zeros(gpu, [c.vocab, c.hidden], "bf16", "bench embed")
    : Tensor.fromArray(gpu, randoms(c.vocab * c.hidden, 0.5), [c.vocab, c.hidden], "f32", "bench embed");
  const draft = Eagle3Draft.create(gpu, cfg, { seed: 1 });
  try {
    const step = await buildEagle3Step(draft, {
      batch: c.batch,
      seqLen: c.seqLen,
      tttLength: c.ttt,
      embedding,
      vocab: prefixMapping(c.draftVocab, c.vocab),
    });
    try {
      step.aux.write(randoms(N * 3 * c.hidden, 1));
      step.ids.write(Int32Array.from({ length: N }, () => Math.floor(rand() * c.vocab)));
      step.lengths.write(new Int32Array(c.batch).fill(c.seqLen));
      step.lossMask.write(new Float32Array(N).fill(1));
      step.teacherLogits.write(randoms(N * c.draftVocab, 3));
      step.teacherArgmax.write(Int32Array.from({ length: N }, () => Math.floor(rand() * c.draftVocab)));
      const ms = await timeProgram(gpu, step.program, reps);
      return {
        ...row,
        ms,
        tokensPerSec: N / ms * 1000,
        note: `${step.program.dispatches.length} dispatches, f32`,
      };
    } finally {
      step.destroy();
    }
  } catch (e) {
    if (e instanceof LimitError) return { ...row, ms: NaN, note: `skipped: ${e.message}` };
    throw e;
  } finally {
    draft.destroy();
    embedding.destroy();
  }
}

/**
 * Draft training tokens/s (forward + backward, no optimizer) for the configuration (a
 * tinystories-656K-like target: H 128, nh 8, nkv 4, hd 16, I 384, V = Vd = 2048, B 4, T 128, K 7) and for a
 * draft layer shaped like Llama-3-8B's (H 4096, I 14336, nh 32, nkv 8, Vd 32000, V 128256) at B 1, T 16, K 7,
 * which is skipped (with a note) where its f32 lm_head (500 MiB) or bf16 embedding (1 GiB) exceed the
 * device's binding size (lavapipe's 128 MiB). `quick` shortens T to 32 and the repetitions.
 */
export async function benchEagle3(gpu: Gpu, opts: BenchOptions = {}): Promise<BenchRow[]> {
  const reps = opts.quick ? 1 : 3;
  const cases: Case[] = [
    {
      name: "tinystories-656K draft",
      hidden: 128,
      intermediate: 384,
      heads: 8,
      kvHeads: 4,
      headDim: 16,
      vocab: 2048,
      draftVocab: 2048,
      batch: 4,
      seqLen: opts.quick ? 32 : 128,
      ttt: 7,
    },
    {
      name: "Llama-3-8B-shaped draft",
      hidden: 4096,
      intermediate: 14336,
      heads: 32,
      kvHeads: 8,
      headDim: 128,
      vocab: 128256,
      draftVocab: 32000,
      batch: 1,
      seqLen: 16,
      ttt: 7,
    },
  ];
  const rows: BenchRow[] = [];
  for (const c of cases) rows.push(await runCase(gpu, c, reps));
  return rows;
}
