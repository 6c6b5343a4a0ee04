/**
 * Where the time of one online training step goes (`deno task bench --profile`): the learning-check recipe's
 * step (./recipe_step.ts: a random-weight target of tinystories-656K's shape, B 4, T 128, or 64 with --quick,
 * TTT 7, Vd 2048), as the trainer runs it: the target forward program, the draft step program (forward,
 * losses, backward) and the optimizer update program, each profiled per kernel (lib/gpu/profile.ts), and the
 * whole step timed from the host. What the three programs' own run times leave of the step is the host's time between and around
 * the submissions (input writes, encoding, submits).
 */
import type { Gpu } from "../gpu/device.ts";
import { formatProfile, type Profile, profileProgram } from "../gpu/profile.ts";
import { loadRecipeModels, type RecipeModels, type RecipeStep, recipeStep } from "./recipe_step.ts";

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
  let models: RecipeModels | null = null;
  let online: RecipeStep | null = null;
  try {
    models = await loadRecipeModels(gpu, dir);
    gpu.pool.resetPeak();
    online = await recipeStep(models, B, T, K);
    online.runAll();
    await gpu.sync();
    const t0 = performance.now();
    for (let i = 0; i < reps; i++) online.runAll();
    await gpu.sync();
    const stepMs = (performance.now() - t0) / reps;
    const programs = [online.forward.program, online.step.program, models.optimizer.program];
    const names = [
      "target forward (aux, draft logits, argmax)",
      "draft TTT forward + backward",
      "optimizer update",
    ];
    const parts = [];
    for (const [i, program] of programs.entries()) {
      parts.push({ name: names[i], profile: await profileProgram(gpu, program, reps) });
    }
    const programsMs = parts.reduce((s, p) => s + p.profile.wallMs, 0);
    return {
      shape: `B${B} T${T} ttt${K} Vd${models.draftConfig.draftVocabSize}`,
      parts,
      stepMs,
      programsMs,
      hostGapMs: stepMs - programsMs,
      tokensPerSec: B * T / stepMs * 1000,
      peakBytes: gpu.pool.peakBytes,
      textureBytes: programs.reduce((n, p) => n + p.textureBytes(), 0),
    };
  } finally {
    online?.destroy();
    models?.destroy();
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
