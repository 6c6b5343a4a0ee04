/**
 * Speed of the target model (lib/bench/target_measure.ts: prefill forward and KV-cache decoding) for
 * tinystories-656K when it is at hand and for random-weight targets written to a temporary directory
 * (lib/bench/random_targets.ts): a Llama of hidden 512 (bf16), whose prefill is also timed with its layers
 * streamed through one weight slot, a Qwen3-MoE of the same attention and a GPT-OSS, each beside a dense Llama
 * of equal active parameters.
 */
import type { Gpu } from "../gpu/device.ts";
import { pathExists } from "../io/atomic.ts";
import { TargetModel } from "../models/target.ts";
import { StreamedTarget } from "../models/target_stream.ts";
import { type RandomGptOssDims, writeRandomGptOss, writeRandomLlama } from "./random_targets.ts";
import { measureTarget, type TargetBenchSizes } from "./target_measure.ts";
import type { BenchOptions, BenchRow } from "./types.ts";

/** Where `deno task bench` finds tinystories-656K (relative to the repository, as in the tests). */
const TINYSTORIES = new URL("../../../shared/models/tinystories-656K", import.meta.url).pathname;

/**
 * Prefill forward and KV-cache decode tokens/s of tinystories-656K, of a random hidden-512 Llama, of a random
 * Qwen3-MoE (64 experts, top-8, Qwen3-30B-A3B's proportions at hidden 512) beside a dense Llama of the same
 * active MLP width (8 × 192 = 1536), and of a random GPT-OSS ({@link GPT_OSS_BENCH}, 4 layers) beside its dense
 * twin. `--quick` runs 2 layers instead of 8 (or 4), 64 prefill tokens instead of 256 and 8 decode steps
 * instead of 32.
 */
export async function benchTarget(gpu: Gpu, opts: BenchOptions = {}): Promise<BenchRow[]> {
  const quick = opts.quick ?? false;
  const sizes: TargetBenchSizes = {
    seqLen: quick ? 64 : 256,
    reps: quick ? 2 : 5,
    promptLen: 16,
    newTokens: quick ? 8 : 32,
    batches: [1, 4],
  };
  const rows: BenchRow[] = [];
  if (await pathExists(`${TINYSTORIES}/model.safetensors`)) {
    rows.push(...await measureTarget(gpu, "tinystories-656K", TINYSTORIES, sizes));
  } else {
    rows.push({
      group: "target",
      name: "tinystories-656K",
      shape: "-",
      ms: 0,
      note: `skipped: ${TINYSTORIES} is absent`,
    });
  }
  const layers = quick ? 2 : 8;
  const tmp = await Deno.makeTempDir({ prefix: "eaglet-bench-target-" });
  try {
    const dims = { hidden: 512, layers, heads: 8, kvHeads: 4, intermediate: 1408, vocab: 4096 };
    await writeRandomLlama(tmp, dims);
    rows.push(
      ...await measureTarget(gpu, `random Llama (bf16, ${dims.heads}/${dims.kvHeads} heads)`, tmp, sizes),
    );
    rows.push(await benchStreamed(gpu, tmp, sizes.seqLen, sizes.reps));
    const moe = { experts: 64, topK: 8, expertIntermediate: 192 };
    await writeRandomLlama(tmp, { ...dims, moe });
    const label = `random Qwen3-MoE (bf16, E${moe.experts} top-${moe.topK} I${moe.expertIntermediate})`;
    rows.push(...await measureTarget(gpu, label, tmp, sizes));
    await writeRandomLlama(tmp, { ...dims, intermediate: moe.topK * moe.expertIntermediate });
    const dense = `random Llama, the MoE's active width (I${moe.topK * moe.expertIntermediate})`;
    rows.push(...await measureTarget(gpu, dense, tmp, sizes));
  } finally {
    await Deno.remove(tmp, { recursive: true });
  }
  // Half the depth of the others: its MXFP4 decoding makes it the dearest row on CPU adapters.
  rows.push(...await benchGptOss(gpu, { ...GPT_OSS_BENCH, layers: quick ? 2 : GPT_OSS_BENCH.layers }, sizes));
  return rows;
}

/**
 * The bench's GPT-OSS: gpt-oss-20b's proportions at hidden 512 (32 experts of width = hidden, top-4, head_dim
 * 64, 8 query heads per KV head, window 128 on every other layer), its experts in MXFP4 as published.
 */
export const GPT_OSS_BENCH: RandomGptOssDims = {
  hidden: 512,
  layers: 4,
  heads: 8,
  kvHeads: 1,
  headDim: 64,
  vocab: 4096,
  experts: 32,
  topK: 4,
  expertIntermediate: 512,
  slidingWindow: 128,
  mxfp4: true,
};

/**
 * Rows of a random GPT-OSS of dims `d` (lib/bench/random_targets.ts) and of a dense Llama of equal active
 * parameters: the same attention (its biases and sinks aside; head_dim must be hidden / heads, the Llama's) and
 * an MLP as wide as the top-k experts (topK × I), so the two differ by the MoE's routing, grouping and clamped
 * SwiGLU (and MXFP4 decoding).
 */
export async function benchGptOss(
  gpu: Gpu,
  d: RandomGptOssDims,
  sizes: TargetBenchSizes,
): Promise<BenchRow[]> {
  if (d.headDim * d.heads !== d.hidden) {
    throw new RangeError(`benchGptOss: head_dim ${d.headDim} × ${d.heads} heads must be hidden ${d.hidden}`);
  }
  const tmp = await Deno.makeTempDir({ prefix: "eaglet-bench-gpt-oss-" });
  try {
    await writeRandomGptOss(tmp, d);
    const experts = `${d.mxfp4 ? "MXFP4" : "bf16"} experts`;
    const label = `random GPT-OSS (${experts}, E${d.experts} top-${d.topK} I${d.expertIntermediate}, ` +
      `${d.heads}/${d.kvHeads} heads, window ${d.slidingWindow} on every other layer)`;
    const rows = await measureTarget(gpu, label, tmp, sizes);
    const width = d.topK * d.expertIntermediate;
    await writeRandomLlama(tmp, {
      hidden: d.hidden,
      layers: d.layers,
      heads: d.heads,
      kvHeads: d.kvHeads,
      intermediate: width,
      vocab: d.vocab,
    });
    rows.push(
      ...await measureTarget(gpu, `random Llama, the GPT-OSS's active width (I${width})`, tmp, sizes),
    );
    return rows;
  } finally {
    await Deno.remove(tmp, { recursive: true });
  }
}

/**
 * The prefill forward (aux states, full-vocabulary statistics and top-16: what prepare-hidden-states runs) of
 * the target in `dir` with its decoder layers streamed through one weight slot (lib/models/target_stream.ts),
 * wall clock per forward including the layer reads from the file, beside the resident forward timed the same way.
 */
async function benchStreamed(gpu: Gpu, dir: string, seqLen: number, reps: number): Promise<BenchRow> {
  const outputs = { aux: true, vocabStats: true, topk: 16 };
  const time = async (run: () => Promise<void> | void) => {
    await run();
    await gpu.sync();
    const t0 = performance.now();
    for (let i = 0; i < reps; i++) await run();
    await gpu.sync();
    return (performance.now() - t0) / reps;
  };
  const resident = await TargetModel.load(gpu, dir, { onMessage: () => {} });
  const c = resident.config;
  const ids = Int32Array.from({ length: seqLen }, (_, i) => 3 + (i * 7) % (c.vocabSize - 3));
  let residentMs: number;
  try {
    const f = await resident.forward(1, seqLen, outputs);
    residentMs = await time(() => f.run(ids, [seqLen]));
    f.destroy();
  } finally {
    resident.destroy();
  }
  const streamed = await StreamedTarget.load(gpu, dir, { budgetBytes: 1 });
  try {
    const f = await streamed.forward(1, seqLen, outputs);
    const ms = await time(() => f.run(ids, [seqLen]));
    f.destroy();
    return {
      group: "target",
      name: "random Llama prefill, layers streamed through 1 slot",
      shape: `B1 T${seqLen} H${c.hiddenSize} L${c.numLayers} V${c.vocabSize}`,
      ms,
      tokensPerSec: seqLen / ms * 1000,
      note: `resident: ${residentMs.toFixed(1)} ms (wall clock, layer reads from the file included)`,
    };
  } finally {
    streamed.destroy();
  }
}
