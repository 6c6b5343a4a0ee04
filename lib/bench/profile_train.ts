/**
 * Where the time of one online training step goes (`deno task bench --profile`): the learning-check recipe's
 * step (a random-weight target of tinystories-656K's shape, B 4, T 128, or 64 with --quick, TTT 7, Vd 2048),
 * as the trainer runs it: the target forward program, the draft step program (forward, losses, backward) and
 * the optimizer update program, each profiled per kernel (lib/gpu/profile.ts), and the whole step timed from
 * the host. What the three programs' own run times leave of the step is the host's time between and around
 * the submissions (input writes, encoding, submits).
 */
import type { Gpu } from "../gpu/device.ts";
import { formatProfile, type Profile, profileProgram } from "../gpu/profile.ts";
import { TargetModel } from "../models/target.ts";
import { parseDraftConfig } from "../models/draft_config.ts";
import { buildEagle3Step, Eagle3Draft } from "../models/eagle3.ts";
import { identityVocabMapping } from "../data/vocab.ts";
import { AdamWOptimizer } from "../train/optimizer.ts";
import { RECIPE_TARGET, writeRandomTarget } from "./train.ts";

/** What {@link profileTrainingStep} measured. */
export interface StepProfile {
  /** The step's shape, e.g. "B4 T128 ttt7 Vd2048". */
  shape: string;
  /** The step's programs in the order they run, each profiled per kernel. */
  parts: Array<{ name: string; profile: Profile }>;
  /** One whole step from the host (forward, draft step, update; one sync per `reps` steps), ms. */
  stepMs: number;
  /** The parts' whole-run times summed (each program alone, from the host), ms. */
  programsMs: number;
  /** `stepMs - programsMs`: the host's time between and around the submissions, ms. */
  hostGapMs: number;
  /** Tokens per second of the whole step (B·T / stepMs). */
  tokensPerSec: number;
  /** The buffer pool's peak while the step ran, bytes. */
  peakBytes: number;
  /** Bytes of the programs' own textures (a CPU adapter's matmul operands), besides the pool. */
  textureBytes: number;
}

/** Options of {@link profileTrainingStep}. */
export interface ProfileTrainingOptions {
  /** Sequence length T (default 128). */
  seqLen?: number;
  /** Profiled runs averaged and steps timed (default 2). */
  reps?: number;
}

/** Profiles the recipe's online training step (see the module note). */
export async function profileTrainingStep(gpu: Gpu, opts: ProfileTrainingOptions = {}): Promise<StepProfile> {
  const B = 4, T = opts.seqLen ?? 128, K = 7, reps = opts.reps ?? 2;
  const dir = await Deno.makeTempDir({ prefix: "eaglet-profile-train-" });
  const owned: Array<{ destroy(): void }> = [];
  try {
    await writeRandomTarget(dir, RECIPE_TARGET);
    const target = await TargetModel.load(gpu, dir);
    owned.push(target);
    const cfg = parseDraftConfig({
      ...RECIPE_TARGET,
      architectures: ["LlamaForCausalLMEagle3"],
      num_hidden_layers: 1,
      draft_vocab_size: 2048,
    }, "recipe draft");
    const vocab = identityVocabMapping(cfg.vocabSize);
    const draft = Eagle3Draft.create(gpu, cfg, { seed: 0 });
    owned.push(draft);
    const entries = draft.entries().map(([name, param, grad]) => ({ name, param, grad }));
    const opt = await AdamWOptimizer.create(gpu, entries, { maxGradNorm: 0.5 });
    owned.push(opt);
    gpu.pool.resetPeak();
    const forward = await target.forward(B, T, {
      aux: true,
      subsetIds: vocab.draftToTarget,
      vocabStats: true,
    });
    owned.push(forward);
    const step = await buildEagle3Step(draft, {
      batch: B,
      seqLen: T,
      tttLength: K,
      embedding: target.embed,
      vocab,
      train: true,
      inputs: {
        aux: forward.aux!,
        ids: forward.ids,
        lengths: forward.lengths,
        teacherLogits: forward.subsetLogits!,
        teacherArgmax: forward.vocabArgmax!,
      },
    });
    owned.push(step);
    step.lossMask.write(new Float32Array(B * T).fill(1));
    const ids = Int32Array.from({ length: B * T }, (_, i) => 3 + (i * 37) % 2000);
    const lengths = new Array(B).fill(T);
    const once = () => {
      forward.run(ids, lengths);
      step.run();
      opt.update(1e-4);
    };
    once();
    await gpu.sync();
    const t0 = performance.now();
    for (let i = 0; i < reps; i++) once();
    await gpu.sync();
    const stepMs = (performance.now() - t0) / reps;
    const parts = [
      {
        name: "target forward (aux, draft logits, argmax)",
        profile: await profileProgram(gpu, forward.program, reps),
      },
      { name: "draft TTT forward + backward", profile: await profileProgram(gpu, step.program, reps) },
      { name: "optimizer update", profile: await profileProgram(gpu, opt.program, reps) },
    ];
    const programsMs = parts.reduce((s, p) => s + p.profile.wallMs, 0);
    return {
      shape: `B${B} T${T} ttt${K} Vd${cfg.draftVocabSize}`,
      parts,
      stepMs,
      programsMs,
      hostGapMs: stepMs - programsMs,
      tokensPerSec: B * T / stepMs * 1000,
      peakBytes: gpu.pool.peakBytes,
      textureBytes: [forward.program, step.program, opt.program].reduce((n, p) => n + p.textureBytes(), 0),
    };
  } finally {
    for (const o of owned.reverse()) o.destroy();
    await Deno.remove(dir, { recursive: true });
  }
}

/** The step profile as text: the step and its parts' shares, then each part's kernel table (`top` rows). */
export function formatStepProfile(sp: StepProfile, top = 15): string {
  const lines = [
    `training step ${sp.shape}: ${sp.stepMs.toFixed(1)} ms (${sp.tokensPerSec.toFixed(0)} tokens/s), ` +
    `its programs alone ${sp.programsMs.toFixed(1)} ms, host time between them ${
      sp.hostGapMs.toFixed(1)
    } ms; ` +
    `buffer pool peak ${(sp.peakBytes / 2 ** 20).toFixed(1)} MiB, textures ${
      (sp.textureBytes / 2 ** 20).toFixed(1)
    } MiB`,
  ];
  for (const { name, profile } of sp.parts) {
    lines.push(
      `  ${name.padEnd(44)} ${profile.wallMs.toFixed(1).padStart(9)} ms ` +
        `${(100 * profile.wallMs / sp.stepMs).toFixed(1).padStart(5)}% of the step`,
    );
  }
  for (const { name, profile } of sp.parts) lines.push("", `== ${name} ==`, formatProfile(profile, top));
  return lines.join("\n");
}
