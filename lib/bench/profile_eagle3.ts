/**
 * Where the time of one EAGLE-3 draft training step goes: builds the bench's tiny configuration (H 128, I 384,
 * nh 8, nkv 4, hd 16, V = Vd = 2048, B 4, T 128, K 7; lib/bench/eagle3.ts), profiles it with
 * {@link profileProgram} and prints the time per kernel and the slowest (kernel, grid) pairs.
 *
 *   deno run -A lib/bench/profile_eagle3.ts [--reps N] [--seq T] [--top N]
 */
import { Gpu } from "../gpu/device.ts";
import { formatProfile, type Profile, profileProgram } from "../gpu/profile.ts";
import { Tensor } from "../tensor.ts";
import type { VocabMapping } from "../data/vocab.ts";
import { parseDraftConfig } from "../models/draft_config.ts";
import { buildEagle3Step, Eagle3Draft } from "../models/eagle3.ts";
import { mulberry32 } from "../data/random.ts";

/** Options of {@link profileEagle3}. */
export interface ProfileEagle3Options {
  /** Profiled runs averaged (default 2). */
  reps?: number;
  /** Sequence length T (default 128). */
  seqLen?: number;
  /** Rows of each printed table (default 30). */
  top?: number;
  /** Print the tables (default true). */
  print?: boolean;
}

/**
 * Profiles one training step (forward, losses, backward; no optimizer) of the bench's tiny draft at B 4, K 7
 * and returns the profile; prints the per-kernel table and the slowest (kernel, workgroups) groups.
 */
export async function profileEagle3(gpu: Gpu, opts: ProfileEagle3Options = {}): Promise<Profile> {
  const B = 4, T = opts.seqLen ?? 128, K = 7, V = 2048, H = 128;
  const cfg = parseDraftConfig({
    hidden_size: H,
    intermediate_size: 384,
    num_attention_heads: 8,
    num_key_value_heads: 4,
    head_dim: 16,
    vocab_size: V,
    draft_vocab_size: V,
    max_position_embeddings: 4096,
  }, "profile draft");
  const rand = mulberry32(1);
  const randoms = (n: number, scale: number) =>
    Float32Array.from({ length: n }, () => (2 * rand() - 1) * scale);
  const N = B * T;
  const vocab: VocabMapping = {
    draftVocabSize: V,
    targetVocabSize: V,
    d2t: new BigInt64Array(V),
    t2d: new Uint8Array(V).fill(1),
    draftToTarget: Int32Array.from({ length: V }, (_, i) => i),
  };
  const embedding = Tensor.fromArray(gpu, randoms(V * H, 0.5), [V, H], "f32", "profile embed");
  const draft = Eagle3Draft.create(gpu, cfg, { seed: 1 });
  try {
    const step = await buildEagle3Step(draft, { batch: B, seqLen: T, tttLength: K, embedding, vocab });
    try {
      step.aux.write(randoms(N * 3 * H, 1));
      step.ids.write(Int32Array.from({ length: N }, () => Math.floor(rand() * V)));
      step.lengths.write(new Int32Array(B).fill(T));
      step.lossMask.write(new Float32Array(N).fill(1));
      step.teacherLogits.write(randoms(N * V, 3));
      step.teacherArgmax.write(Int32Array.from({ length: N }, () => Math.floor(rand() * V)));
      const profile = await profileProgram(gpu, step.program, opts.reps ?? 2);
      if (opts.print ?? true) {
        const top = opts.top ?? 30;
        console.log(`EAGLE-3 step B${B} T${T} K${K} H${H} I384 nh8/4 hd16 Vd${V} on ${gpu.describe()}`);
        console.log(formatProfile(profile, top));
        console.log("\nslowest (kernel, workgroups) groups:");
        const groups = new Map<string, { n: number; ms: number }>();
        for (const d of profile.dispatches) {
          const key = `${d.label} [${d.workgroups.join(",")}]`;
          const g = groups.get(key) ?? { n: 0, ms: 0 };
          g.n++;
          g.ms += d.ms;
          groups.set(key, g);
        }
        for (const [key, g] of [...groups].sort((a, b) => b[1].ms - a[1].ms).slice(0, top)) {
          console.log(
            `${key.slice(0, 72).padEnd(72)} ${String(g.n).padStart(4)} ${g.ms.toFixed(2).padStart(9)} ms ` +
              `${(100 * g.ms / profile.totalMs).toFixed(1).padStart(5)}%`,
          );
        }
      }
      return profile;
    } finally {
      step.destroy();
    }
  } finally {
    draft.destroy();
    embedding.destroy();
  }
}

if (import.meta.main) {
  const arg = (name: string) => {
    const i = Deno.args.indexOf(`--${name}`);
    return i >= 0 ? Number(Deno.args[i + 1]) : undefined;
  };
  const gpu = await Gpu.create();
  await profileEagle3(gpu, { reps: arg("reps"), seqLen: arg("seq"), top: arg("top") });
  gpu.destroy();
}
