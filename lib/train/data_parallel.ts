/**
 * Data parallelism across the ranks of a {@link World} (SpecForge trains with torchrun and FSDP; the
 * semantics are DDP's): every rank runs the same draft on its share of each batch (lib/data/loader.ts gives
 * rank r the positions r, r+N, … of the epoch's order, as PyTorch's DistributedSampler does), the gradients
 * are averaged across ranks before every optimizer update, so every rank applies the same clipped AdamW
 * update to the same weights; metric sums are summed (numerators and denominators, as SpecForge's trainer
 * reduces them); a checksum of the weights at every save catches a rank that drifted.
 */
import type { World } from "../dist/world.ts";
import type { Eagle3Draft } from "../models/eagle3.ts";
import { TrainingDivergedError } from "./divergence.ts";

/** Gradient elements per all-reduce: DDP-style buckets of 64 MiB (f32). */
const BUCKET = 2 ** 24;

/**
 * Replaces every gradient of `draft` by its mean over the ranks (one sync per tensor to read, one write back;
 * all-reduces over buckets of the flattened gradients). With equal per-rank batch shapes this is the gradient
 * of the loss over the union of the ranks' batches, as one process with N times the batch computes it.
 */
export async function averageGradients(world: World, draft: Eagle3Draft): Promise<void> {
  if (world.size === 1) return;
  const grads = draft.entries().map(([, , grad]) => grad);
  const host: Float32Array<ArrayBuffer>[] = [];
  for (const g of grads) host.push(await g.readFloat());
  const total = host.reduce((n, h) => n + h.length, 0);
  const flat = new Float32Array(Math.min(total, BUCKET));
  const scale = 1 / world.size;
  // Walk the tensors in order, filling a bucket, reducing it when full, and scattering it back.
  let pending: Array<{ array: Float32Array; from: number; at: number; n: number }> = [];
  let used = 0;
  const flush = () => {
    world.sum(flat.subarray(0, used));
    for (const p of pending) {
      for (let i = 0; i < p.n; i++) p.array[p.from + i] = flat[p.at + i] * scale;
    }
    pending = [];
    used = 0;
  };
  for (const array of host) {
    for (let from = 0; from < array.length;) {
      const n = Math.min(array.length - from, flat.length - used);
      flat.set(array.subarray(from, from + n), used);
      pending.push({ array, from, at: used, n });
      used += n;
      from += n;
      if (used === flat.length) flush();
    }
  }
  if (used > 0) flush();
  grads.forEach((g, i) => g.write(host[i]));
}

/**
 * Throws {@link TrainingDivergedError} on every rank when the ranks' weights differ: they must stay identical,
 * since every rank applies the same update. Each rank contributes a checksum per parameter in its own row of
 * a table that one all-reduce (a sum with zeros elsewhere, so exact) gives to every rank; ranks whose row
 * differs from rank 0's are named. `when` names the moment in the message.
 */
export async function checkRanksAgree(world: World, draft: Eagle3Draft, when: string): Promise<void> {
  if (world.size === 1) return;
  const k = draft.names.length;
  const table = new Float64Array(world.size * k);
  for (const [i, [, param]] of draft.entries().entries()) {
    const w = await param.readFloat();
    let s = 0;
    for (let j = 0; j < w.length; j++) s += w[j] * (1 + (j % 7)); // position-weighted: a swap shows
    table[world.rank * k + i] = s;
  }
  world.sum(table);
  const bad: number[] = [];
  for (let r = 1; r < world.size; r++) {
    for (let i = 0; i < k; i++) {
      if (table[r * k + i] !== table[i]) {
        bad.push(r);
        break;
      }
    }
  }
  if (bad.length > 0) {
    throw new TrainingDivergedError(
      `the weights of rank(s) ${bad.join(", ")} differ from rank 0's ${when}; stopping every rank`,
    );
  }
}
