/**
 * Per-dispatch GPU time of a {@link Program}, aggregated by dispatch label (the kernel name by default).
 *
 * With the `timestamp-query` feature each dispatch runs in its own compute pass whose beginning and end are
 * timestamped; all runs of all dispatches are resolved into one buffer and read back once. Without it, each
 * dispatch is timed alone: `reps` copies of it in one pass, one submit and one sync, minus the cost of an
 * empty submit and sync measured the same way (coarse: Deno's sync costs about 11 ms).
 *
 * Profiling runs the program's dispatches (each alone, in the wall-clock fallback), so it changes whatever
 * the program writes: profile a program whose outputs do not matter (a bench or a throwaway step).
 */
import type { Gpu } from "./device.ts";
import type { Program } from "./program.ts";

/** Time of one label (kernel) over the profiled runs. */
export interface ProfileRow {
  /** The dispatch label (kernel name). */
  label: string;
  /** Dispatches with this label in one run of the program. */
  count: number;
  /** Milliseconds per program run spent in these dispatches. */
  ms: number;
  /** Fraction of the program's summed dispatch time (0..1). */
  share: number;
  /** Floating-point operations per run, summed over the dispatches that state them (0: none do). */
  flops: number;
  /** Bytes of the buffer ranges bound, summed over the dispatches (see `Dispatch.bytes`). */
  bytes: number;
}

/** Time of one dispatch, by position in the program. */
export interface DispatchTime {
  /** Index in `program.dispatches`. */
  index: number;
  label: string;
  workgroups: [number, number, number];
  /** Milliseconds per run. */
  ms: number;
  /** Floating-point operations, when the op states them. */
  flops?: number;
  /** Bytes of the buffer ranges bound. */
  bytes: number;
}

/** What {@link profileProgram} measured. */
export interface Profile {
  /** "timestamps" (GPU timestamp queries) or "wallclock" (each dispatch timed alone from the host). */
  method: "timestamps" | "wallclock";
  /** Runs averaged. */
  reps: number;
  /** Summed dispatch time per run, ms. */
  totalMs: number;
  /**
   * One whole run timed from the host (one submit, one sync, less an empty submit and sync), ms: against
   * {@link totalMs} it shows what the dispatches' own times leave out (barriers, the driver's work between
   * them).
   */
  wallMs: number;
  /** Why the method is not the one the device's features would pick, when it is not. */
  note?: string;
  /** Per label, slowest first. */
  rows: ProfileRow[];
  /** Per dispatch, in program order. */
  dispatches: DispatchTime[];
}

/** Queries per query set (the WebGPU maximum is 4096; two per dispatch). */
const QUERIES_PER_SET = 4096;

/**
 * On lavapipe, timestamps stop accounting for the work once a program uses textures (measured: a draft step's
 * timestamps summed to 97 ms of a 761 ms run, an optimizer update's to 2.5 ms of 33 ms after textures had
 * been used). A timestamp profile that sums to less than this share of the whole run's wall time is redone
 * from the host.
 */
const MIN_TIMESTAMP_SHARE = 0.5;

/** Repetitions of each dispatch when timing it alone replaces timestamps (spreads the submit's own cost). */
const MIN_WALLCLOCK_REPS = 4;

/**
 * Runs `program` `reps` times (after one warm-up run) and returns the mean GPU time of every dispatch and
 * of every label. Uses timestamp queries when `gpu.features.timestampQuery` and they account for the run's
 * wall time (see {@link MIN_TIMESTAMP_SHARE}), else times dispatches alone.
 */
export async function profileProgram(gpu: Gpu, program: Program, reps = 1): Promise<Profile> {
  if (!(reps >= 1 && Number.isInteger(reps))) {
    throw new RangeError(`profileProgram: reps must be >= 1, got ${reps}`);
  }
  program.run();
  await gpu.sync();
  const wallMs = await wholeRun(gpu, program);
  let method: Profile["method"] = gpu.features.timestampQuery ? "timestamps" : "wallclock";
  let note: string | undefined;
  let ms = method === "timestamps"
    ? await timestamped(gpu, program, reps)
    : await wallclock(gpu, program, reps);
  const stamped = ms.reduce((a, b) => a + b, 0);
  if (method === "timestamps" && stamped < MIN_TIMESTAMP_SHARE * wallMs) {
    const alone = Math.max(reps, MIN_WALLCLOCK_REPS);
    note = `timestamps summed to ${stamped.toFixed(1)} ms of a ${wallMs.toFixed(1)} ms run: timed each ` +
      `dispatch alone instead, ${alone} times in one submission`;
    method = "wallclock";
    ms = await wallclock(gpu, program, alone);
  }
  const dispatches: DispatchTime[] = program.dispatches.map((d, i) => ({
    index: i,
    label: d.label,
    workgroups: d.workgroups,
    ms: ms[i],
    flops: d.flops,
    bytes: d.bytes,
  }));
  return { method, reps, wallMs, ...(note ? { note } : {}), ...aggregate(dispatches), dispatches };
}

/** Milliseconds of one run of `program` from submit to sync, less an empty submit and sync (best of 3). */
async function wholeRun(gpu: Gpu, program: Program): Promise<number> {
  const time = async (run: () => void) => {
    let best = Infinity;
    for (let i = 0; i < 3; i++) {
      const t0 = performance.now();
      run();
      await gpu.sync();
      best = Math.min(best, performance.now() - t0);
    }
    return best;
  };
  const empty = await time(() => gpu.submit([gpu.device.createCommandEncoder().finish()]));
  return Math.max(0, await time(() => program.run()) - empty);
}

/** Sums dispatch times by label. */
export function aggregate(dispatches: DispatchTime[]): { totalMs: number; rows: ProfileRow[] } {
  const byLabel = new Map<string, ProfileRow>();
  let totalMs = 0;
  for (const d of dispatches) {
    totalMs += d.ms;
    const row = byLabel.get(d.label) ?? { label: d.label, count: 0, ms: 0, share: 0, flops: 0, bytes: 0 };
    row.count++;
    row.ms += d.ms;
    row.flops += d.flops ?? 0;
    row.bytes += d.bytes;
    byLabel.set(d.label, row);
  }
  const rows = [...byLabel.values()].sort((a, b) => b.ms - a.ms);
  for (const r of rows) r.share = totalMs > 0 ? r.ms / totalMs : 0;
  return { totalMs, rows };
}

/** Mean ms per dispatch from timestamp queries (one pass per dispatch, one readback in all). */
async function timestamped(gpu: Gpu, program: Program, reps: number): Promise<Float64Array> {
  const n = program.dispatches.length;
  const perSet = QUERIES_PER_SET / 2;
  const sets: GPUQuerySet[] = [];
  const resolved: GPUBuffer[] = [];
  const sums = new Float64Array(n);
  try {
    for (let first = 0; first < n; first += perSet) {
      const count = 2 * Math.min(perSet, n - first);
      sets.push(gpu.device.createQuerySet({ type: "timestamp", count, label: "profile timestamps" }));
      resolved.push(
        gpu.createBuffer(
          8 * count,
          GPUBufferUsage.QUERY_RESOLVE | GPUBufferUsage.COPY_SRC,
          "profile resolve",
        ),
      );
    }
    for (let rep = 0; rep < reps; rep++) {
      await gpu.scoped("profileProgram (timestamps)", () => {
        const encoder = gpu.device.createCommandEncoder({ label: `profile ${program.label}` });
        program.dispatches.forEach((d, i) => {
          const querySet = sets[Math.floor(i / perSet)];
          const q = 2 * (i % perSet);
          const pass = encoder.beginComputePass({
            label: d.label,
            timestampWrites: { querySet, beginningOfPassWriteIndex: q, endOfPassWriteIndex: q + 1 },
          });
          pass.setPipeline(d.pipeline);
          pass.setBindGroup(0, d.bindGroup);
          pass.dispatchWorkgroups(d.workgroups[0], d.workgroups[1], d.workgroups[2]);
          pass.end();
        });
        sets.forEach((s, j) => encoder.resolveQuerySet(s, 0, s.count, resolved[j], 0));
        gpu.submit([encoder.finish()]);
      });
      for (let j = 0; j < sets.length; j++) {
        const ticks = new BigUint64Array(await gpu.read(resolved[j], 0, 8 * sets[j].count));
        for (let q = 0; q < ticks.length; q += 2) {
          // Timestamps are nanoseconds; a clock that went backwards (allowed by the spec) counts as 0.
          const ns = ticks[q + 1] > ticks[q] ? Number(ticks[q + 1] - ticks[q]) : 0;
          sums[j * perSet + q / 2] += ns / 1e6;
        }
      }
    }
  } finally {
    for (const s of sets) s.destroy();
    for (const b of resolved) b.destroy();
  }
  return sums.map((s) => s / reps);
}

/** Mean ms per dispatch, each timed alone from the host, less the cost of an empty submit and sync. */
async function wallclock(gpu: Gpu, program: Program, reps: number): Promise<Float64Array> {
  const submitAndWait = async (encode: (pass: GPUComputePassEncoder) => void): Promise<number> => {
    const encoder = gpu.device.createCommandEncoder({ label: `profile ${program.label}` });
    const pass = encoder.beginComputePass();
    encode(pass);
    pass.end();
    const t0 = performance.now();
    gpu.submit([encoder.finish()]);
    await gpu.sync();
    return performance.now() - t0;
  };
  let empty = Infinity;
  for (let i = 0; i < 3; i++) empty = Math.min(empty, await submitAndWait(() => {}));
  const out = new Float64Array(program.dispatches.length);
  for (const [i, d] of program.dispatches.entries()) {
    const ms = await submitAndWait((pass) => {
      for (let r = 0; r < reps; r++) {
        pass.setPipeline(d.pipeline);
        pass.setBindGroup(0, d.bindGroup);
        pass.dispatchWorkgroups(d.workgroups[0], d.workgroups[1], d.workgroups[2]);
      }
    });
    out[i] = Math.max(0, ms - empty) / reps;
  }
  return out;
}

/**
 * A profile as a text table: label, count, ms per run, share, cumulative share, GFLOP/s (where the ops state
 * their FLOPs) and GB/s of the bound buffers; `top` rows at most.
 */
export function formatProfile(profile: Profile, top = 40): string {
  const head = `${"kernel".padEnd(56)} ${"count".padStart(5)} ${"ms".padStart(9)} ${"share".padStart(6)} ${
    "cum".padStart(6)
  } ${"GFLOP/s".padStart(8)} ${"GB/s".padStart(7)}`;
  const lines = [
    `${profile.method}, mean of ${profile.reps} run(s): ${profile.totalMs.toFixed(1)} ms of dispatch time ` +
    `per run, ${profile.dispatches.length} dispatches; the whole run ${
      profile.wallMs.toFixed(1)
    } ms from the host`,
    ...(profile.note ? [`(${profile.note})`] : []),
    head,
  ];
  let cum = 0;
  for (const r of profile.rows.slice(0, top)) {
    cum += r.share;
    const rate = (x: number) => r.ms > 0 && x > 0 ? (x / r.ms / 1e6).toFixed(2) : "";
    lines.push(
      `${r.label.slice(0, 56).padEnd(56)} ${String(r.count).padStart(5)} ${r.ms.toFixed(2).padStart(9)} ` +
        `${(100 * r.share).toFixed(1).padStart(5)}% ${(100 * cum).toFixed(1).padStart(5)}% ` +
        `${rate(r.flops).padStart(8)} ${rate(r.bytes).padStart(7)}`,
    );
  }
  if (profile.rows.length > top) lines.push(`... ${profile.rows.length - top} more labels`);
  return lines.join("\n");
}
