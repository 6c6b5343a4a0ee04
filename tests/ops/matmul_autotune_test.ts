import assert from "node:assert/strict";
import { assertClose, gpu, needsGpu, randomArray } from "../gpu.ts";
import { Tensor } from "../../lib/tensor.ts";
import { isCpuAdapter } from "../../lib/gpu/device.ts";
import { runOnce } from "../../lib/gpu/program.ts";
import { matmul, matmulCpu, type MatmulOptions } from "../../lib/ops/matmul.ts";
import {
  AUTOTUNE_MAX_BYTES,
  AUTOTUNE_MAX_FLOPS,
  disableMatmulAutotune,
  enableMatmulAutotune,
  type MatmulTuner,
  shapeClass,
  tunable,
} from "../../lib/ops/matmul_autotune.ts";
import type { RegtileTile } from "../../kernels/matmul.ts";

/** Small tiles (quick to compile) that still differ in rows and columns per invocation. */
const CANDIDATES: RegtileTile[] = [
  { kind: "regtile", tm: 4, tn4: 1, textures: true },
  { kind: "regtile", tm: 8, tn4: 2, textures: true },
];

/** [M, N, K, options]: the three layouts, an odd shape, and a long K that the default splits. */
const CASES: Array<[number, number, number, MatmulOptions]> = [
  [33, 70, 36, {}],
  [40, 64, 32, { transB: true }],
  [36, 48, 64, { transA: true }],
  [5, 7, 9, {}],
  [64, 64, 1024, { transA: true }],
];

/** Runs every case; returns the outputs (the tile comes from whatever chooser is installed). */
async function runCases(): Promise<Float32Array[]> {
  const g = gpu!;
  const outs: Float32Array[] = [];
  for (const [i, [M, N, K, opts]] of CASES.entries()) {
    const a = Tensor.fromArray(g, randomArray(M * K, 10 + i), opts.transA ? [K, M] : [M, K], "f32", "a");
    const b = Tensor.fromArray(g, randomArray(K * N, 20 + i), opts.transB ? [N, K] : [K, N], "f32", "b");
    const out = Tensor.empty(g, [M, N], "f32", "out");
    await runOnce(g, "autotune case", (p) => matmul(p, a, b, out, opts));
    outs.push(await out.readFloat());
    for (const t of [a, b, out]) t.destroy();
  }
  return outs;
}

function cpuResults(): Float32Array[] {
  return CASES.map(([M, N, K, opts], i) =>
    matmulCpu(
      randomArray(M * K, 10 + i),
      opts.transA ? [K, M] : [M, K],
      randomArray(K * N, 20 + i),
      opts.transB ? [N, K] : [K, N],
      opts,
    )
  );
}

async function withTuner<T>(
  cachePath: string | null,
  log: string[],
  body: (t: MatmulTuner) => Promise<T>,
): Promise<T> {
  const tuner = await enableMatmulAutotune(gpu!, {
    cachePath,
    candidates: CANDIDATES,
    reps: 1,
    log: (l) => log.push(l),
  });
  assert.ok(tuner);
  try {
    return await body(tuner);
  } finally {
    disableMatmulAutotune(gpu!);
  }
}

Deno.test({
  name:
    "matmul autotune: times once, caches, reads the cache, ignores a corrupt one; same bits as the default",
  ...needsGpu,
  ignore: needsGpu.ignore || !isCpuAdapter(gpu!),
}, async () => {
  const dir = await Deno.makeTempDir({ prefix: "eaglet-autotune-" });
  const cachePath = `${dir}/sub/matmul-autotune.json`;
  try {
    const plain = await runCases();
    for (const [i, want] of cpuResults().entries()) {
      assertClose(plain[i], want, `case ${i}`, { atol: 1e-4, rtol: 1e-4 });
    }
    const classes = new Set(
      CASES.map(([M, N, K, o]) =>
        shapeClass({ transA: !!o.transA, transB: !!o.transB, bType: "f32", M, N, K })
      ),
    );

    // First run: every class timed, the cache written, results bit for bit those of the default tile.
    const log: string[] = [];
    const [tuned, first] = await withTuner(cachePath, log, async (t) => [await runCases(), t] as const);
    assert.equal(first.timed, classes.size);
    assert.deepEqual(new Set(first.choices.keys()), classes);
    for (const [i, out] of tuned.entries()) assert.deepEqual(out, plain[i], `case ${i} differs from default`);
    const cache = JSON.parse(await Deno.readTextFile(cachePath));
    assert.deepEqual(new Set(Object.keys(cache.adapters[first.adapter])), classes);
    assert.deepEqual(log, []);

    // Second run: the choices come from the cache, nothing is timed.
    const [again, second] = await withTuner(cachePath, log, async (t) => [await runCases(), t] as const);
    assert.equal(second.timed, 0);
    assert.deepEqual(second.choices, first.choices);
    for (const [i, out] of again.entries()) assert.deepEqual(out, plain[i]);

    // A corrupt file: one warning line, then tuned afresh and rewritten.
    await Deno.writeTextFile(cachePath, "{ not json");
    const third = await withTuner(cachePath, log, async (t) => {
      await runCases();
      return t;
    });
    assert.equal(log.length, 1);
    assert.match(log[0], /ignoring the corrupt cache file .*matmul-autotune\.json/);
    assert.ok(!(log[0] as string).includes("\n"));
    assert.equal(third.timed, classes.size);
    assert.ok(JSON.parse(await Deno.readTextFile(cachePath)).adapters[third.adapter]);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test({ name: "matmul autotune: no cache file with cachePath null", ...needsGpu }, async () => {
  const tuner = await enableMatmulAutotune(gpu!, { cachePath: null, candidates: CANDIDATES.slice(0, 1) });
  try {
    if (!tuner) return; // a GPU adapter keeps its tiled default
    assert.equal(tuner.cachePath, null);
    await runCases();
    assert.ok(tuner.timed > 0);
  } finally {
    disableMatmulAutotune(gpu!);
  }
});

Deno.test({
  name: "matmul autotune: timing buffers stay outside the buffer pool; products over the cap are not timed",
  ...needsGpu,
  ignore: needsGpu.ignore || !isCpuAdapter(gpu!),
}, async () => {
  const g = gpu!;
  const [M, N, K] = [48, 80, 40];
  const a = Tensor.fromArray(g, randomArray(M * K, 1), [M, K], "f32", "a");
  const b = Tensor.fromArray(g, randomArray(K * N, 2), [K, N], "f32", "b");
  const out = Tensor.empty(g, [M, N], "f32", "out");
  const held = () => g.pool.liveBytes + g.pool.freeBytes;
  await withTuner(null, [], async (tuner) => {
    g.pool.resetPeak();
    const before = held();
    await runOnce(g, "tuned", (p) => matmul(p, a, b, out));
    assert.equal(tuner.timed, 1);
    assert.equal(held(), before, "the pool holds what it held before the timing");
    assert.equal(g.pool.peakBytes, before, "nor did the timing raise its peak");
  });
  for (const t of [a, b, out]) t.destroy();
  const shape = { transA: false, transB: true, bType: "f32" as const };
  assert.ok(tunable({ ...shape, M: 1024, N: 1024, K: 1024 }));
  assert.ok(!tunable({ ...shape, M: 1024, N: 1024, K: 1025 }), "over the FLOPs cap");
  assert.ok(!tunable({ ...shape, M: 8, N: 32000, K: 4096 }), "a decode step's lm_head: over the bytes cap");
  assert.equal(AUTOTUNE_MAX_FLOPS, 2 ** 31);
  assert.ok(AUTOTUNE_MAX_BYTES >= 4 * 3 * 1024 * 1024);
});
