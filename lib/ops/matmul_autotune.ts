/**
 * Matmul tile autotune (CPU adapters): for each shape class of product (layout NN/NT/TN, B's dtype, and M, N,
 * K rounded up to powers of two) the first product met times each candidate `regtile` tile once and keeps
 * the fastest; the choices are cached in a JSON file per adapter (its description and driver fingerprint),
 * so later runs read them without timing.
 *
 * Every candidate sums each output over k in the same order (one fma chain per output, k ascending; the
 * tile only changes which invocation owns which outputs) and lib/ops/matmul.ts keeps the split over K of the
 * default tile, so the choice changes speed only, never a bit of the result: a training run does not depend
 * on the machine's timings. GPU adapters (the `tiled` family) are not tuned, nor products over
 * {@link AUTOTUNE_MAX_FLOPS} or {@link AUTOTUNE_MAX_BYTES}, which keep the default tile. The timing runs on
 * buffers of its own, outside the buffer pool, so the pool's peak stays what the memory plan predicts.
 *
 * Cache file: `EAGLET_MATMUL_AUTOTUNE_CACHE` (a path, or `none` to keep choices in memory only), else
 * `$XDG_CACHE_HOME/eaglet/matmul-autotune.json` (`~/.cache/...`; `%LOCALAPPDATA%` on Windows).
 */
import { cpuKernels, type Gpu } from "../gpu/device.ts";
import { Program } from "../gpu/program.ts";
import { DTYPE_BYTES, Tensor } from "../tensor.ts";
import { STORAGE_USAGE } from "../gpu/buffers.ts";
import type { RegtileTile } from "../../kernels/matmul.ts";
import {
  DEFAULT_CPU_TILE,
  defaultSplitK,
  fitTile,
  matmul,
  type MatmulShape,
  setMatmulTileChooser,
  tileName,
} from "./matmul.ts";

/** The register tiles timed by default: 8 or 16 rows, 16 or 32 columns per invocation. */
export const AUTOTUNE_CANDIDATES: readonly RegtileTile[] = [
  DEFAULT_CPU_TILE,
  { kind: "regtile", tm: 16, tn4: 4, textures: true },
  { kind: "regtile", tm: 8, tn4: 8, textures: true },
  { kind: "regtile", tm: 8, tn4: 4, textures: true },
];

/**
 * The `--matmul-autotune` flag of the commands that train or evaluate (lib/flags.ts spec): on by default, since
 * the choice never changes a result and a run with the tuned tiles measured faster (README "Benchmarks").
 */
export const MATMUL_AUTOTUNE_FLAG = {
  kind: "bool",
  default: true,
  help: "on CPU adapters, time the matmul register tiles per shape class the first time each is met (about " +
    "12 s for the recipe's 35 classes on 2 cores) and use the fastest, cached per adapter in " +
    "$XDG_CACHE_HOME/eaglet/matmul-autotune.json (EAGLET_MATMUL_AUTOTUNE_CACHE=<file> relocates it, =none " +
    "keeps it in memory); the same results bit for bit. --no-matmul-autotune keeps the default tile",
} as const;

/** Options of {@link enableMatmulAutotune}. */
export interface AutotuneOptions {
  /** The cache file; null keeps choices in memory only. Default {@link defaultAutotuneCachePath}. */
  cachePath?: string | null;
  /** Tiles to time (default {@link AUTOTUNE_CANDIDATES}). */
  candidates?: readonly RegtileTile[];
  /** Timed rounds per candidate (8 runs in one submit each), after a warm-up run (default 3; the fastest counts). */
  reps?: number;
  /** Where the one-line notes go (an ignored cache file, a class tuned); default console.warn. */
  log?: (line: string) => void;
}

/** The autotune state of one device. */
export interface MatmulTuner {
  /** The adapter's key in the cache file. */
  readonly adapter: string;
  /** The cache file, or null. */
  readonly cachePath: string | null;
  /** Tile chosen per shape class (read from the cache or timed in this process). */
  readonly choices: Map<string, RegtileTile>;
  /** Shape classes decided in this process (timed, unless one kernel remains; 0 when all were cached). */
  timed: number;
}

/** The cache file's layout: choices per adapter key, per shape class. */
interface CacheFile {
  version: 1;
  adapters: Record<string, Record<string, { tm: number; tn4: number; textures: boolean }>>;
}

/** The cache path from the environment, or null with `EAGLET_MATMUL_AUTOTUNE_CACHE=none`. */
export function defaultAutotuneCachePath(): string | null {
  const env = Deno.env.get("EAGLET_MATMUL_AUTOTUNE_CACHE");
  if (env) return env === "none" ? null : env;
  const base = Deno.env.get("XDG_CACHE_HOME") || Deno.env.get("LOCALAPPDATA") ||
    (Deno.env.get("HOME") ? `${Deno.env.get("HOME")}/.cache` : null);
  return base ? `${base}/eaglet/matmul-autotune.json` : null;
}

/** The shape class of a product: layout, B's dtype and M, N, K rounded up to powers of two. */
export function shapeClass(s: MatmulShape): string {
  const up = (n: number) => 2 ** Math.ceil(Math.log2(Math.max(1, n)));
  return `${s.transA ? "T" : "N"}${s.transB ? "T" : "N"}.${s.bType}.M${up(s.M)}.N${up(s.N)}.K${up(s.K)}`;
}

/**
 * The adapter's cache key: its description (which names the LLVM version on Mesa's CPU drivers) plus a
 * driver fingerprint. WebGPU does not expose Mesa's version, so the fingerprint is each Vulkan ICD
 * manifest's api_version with its library's size and modification time (a driver upgrade changes them).
 */
export async function adapterKey(gpu: Gpu): Promise<string> {
  const i = gpu.info;
  return [i.vendor, i.architecture, i.device, i.description, await driverFingerprint()].join("|");
}

async function driverFingerprint(): Promise<string> {
  const dir = "/usr/share/vulkan/icd.d";
  const parts: string[] = [];
  try {
    const names = [];
    for await (const e of Deno.readDir(dir)) if (e.name.endsWith(".json")) names.push(e.name);
    for (const name of names.sort()) {
      const icd = JSON.parse(await Deno.readTextFile(`${dir}/${name}`))?.ICD ?? {};
      const lib = await Deno.stat(icd.library_path).catch(() => null);
      parts.push(`${name}:${icd.api_version}:${lib?.size ?? "-"}:${lib?.mtime?.getTime() ?? "-"}`);
    }
  } catch {
    // No Vulkan ICD manifests here (another OS): the adapter's description alone keys the cache.
  }
  return parts.join(",");
}

/** Reads the cache file; a missing file is empty, an unreadable or malformed one is ignored with a warning. */
async function readCache(path: string | null, log: (line: string) => void): Promise<CacheFile> {
  const empty: CacheFile = { version: 1, adapters: {} };
  if (!path) return empty;
  let text: string;
  try {
    text = await Deno.readTextFile(path);
  } catch (e) {
    if (!(e instanceof Deno.errors.NotFound)) {
      log(`matmul autotune: ignoring ${path}: ${(e as Error).message}`);
    }
    return empty;
  }
  try {
    const c = JSON.parse(text);
    if (c?.version !== 1 || typeof c.adapters !== "object" || c.adapters === null) {
      throw new Error("bad layout");
    }
    return c as CacheFile;
  } catch (e) {
    log(`matmul autotune: ignoring the corrupt cache file ${path} (${(e as Error).message})`);
    return empty;
  }
}

/** Merges this adapter's choices into the cache file (written to a temporary file, then renamed). */
async function writeCache(t: MatmulTuner, log: (line: string) => void): Promise<void> {
  if (!t.cachePath) return;
  const cache = await readCache(t.cachePath, () => {});
  const mine: CacheFile["adapters"][string] = {};
  for (const [cls, { tm, tn4, textures }] of t.choices) mine[cls] = { tm, tn4, textures: textures ?? false };
  cache.adapters[t.adapter] = mine;
  const dir = t.cachePath.replace(/[/\\][^/\\]*$/, "");
  try {
    if (dir !== t.cachePath) await Deno.mkdir(dir, { recursive: true });
    const tmp = `${t.cachePath}.${Deno.pid}.tmp`;
    await Deno.writeTextFile(tmp, JSON.stringify(cache, null, 1) + "\n");
    await Deno.rename(tmp, t.cachePath);
  } catch (e) {
    log(`matmul autotune: cannot write ${t.cachePath}: ${(e as Error).message}`);
  }
}

/** Deterministic filler (timing does not depend on the values). */
function filler(n: number): Float32Array<ArrayBuffer> {
  return Float32Array.from({ length: n }, (_, i) => ((i * 0.618034) % 1) - 0.5);
}

/**
 * The largest product timed (FLOPs, 2·M·N·K) and the most bytes its operands and output may take: 2^31 FLOPs
 * (a 1024³ product, about 50 ms on lavapipe's 2 cores, so a class is timed in a few seconds) and 64 MiB. A
 * larger product keeps the default tile: timing it would take minutes at real model sizes, and its operands
 * would double the memory of the run's largest product.
 */
export const AUTOTUNE_MAX_FLOPS = 2 ** 31;
/** See {@link AUTOTUNE_MAX_FLOPS}. */
export const AUTOTUNE_MAX_BYTES = 64 * 2 ** 20;

/** Whether a product of `s` is small enough to be timed ({@link AUTOTUNE_MAX_FLOPS}). */
export function tunable(s: MatmulShape): boolean {
  const bytes = 4 * (s.M * s.K + s.M * s.N) + DTYPE_BYTES[s.bType] * s.K * s.N;
  return 2 * s.M * s.N * s.K <= AUTOTUNE_MAX_FLOPS && bytes <= AUTOTUNE_MAX_BYTES;
}

/**
 * A tensor of its own buffer, outside the buffer pool: timing buffers neither stay parked in the pool
 * afterwards nor count in its peak, which a run compares with its memory plan. Destroy with `.buffer`.
 */
function scratch(gpu: Gpu, shape: number[], dtype: MatmulShape["bType"], label: string): Tensor {
  const bytes = shape[0] * shape[1] * DTYPE_BYTES[dtype];
  const t = new Tensor(gpu, gpu.createBuffer(bytes, STORAGE_USAGE, label), shape, dtype, label);
  t.write(filler(t.size));
  return t;
}

/** The fastest candidate for a product of `s` (operands of its shape; B's dtype as in `s`). */
async function timeCandidates(
  gpu: Gpu,
  s: MatmulShape,
  candidates: readonly RegtileTile[],
  reps: number,
): Promise<RegtileTile> {
  // Candidates that shrink to the same tile for this shape run the same kernel: time each kernel once.
  const seen = new Set<string>();
  candidates = candidates.filter((c) => {
    const key = tileName(fitTile(c, s.M, s.N));
    return !seen.has(key) && seen.add(key);
  });
  if (candidates.length === 1) return candidates[0];
  const a = scratch(gpu, s.transA ? [s.K, s.M] : [s.M, s.K], "f32", "tune a");
  const b = scratch(gpu, s.transB ? [s.N, s.K] : [s.K, s.N], s.bType, "tune b");
  const out = scratch(gpu, [s.M, s.N], "f32", "tune out");
  const programs: Program[] = [];
  try {
    const splitK = defaultSplitK(gpu, s);
    for (const tile of candidates) {
      const p = new Program(gpu, `autotune ${tileName(tile)}`);
      programs.push(p);
      await matmul(p, a, b, out, { transA: s.transA, transB: s.transB, tile, splitK });
      p.run(); // compiles and warms up
    }
    await gpu.sync();
    const best = candidates.map(() => Infinity);
    for (let r = 0; r < reps; r++) {
      // Interleaved rounds, so that a burst of load elsewhere does not favour one candidate; each round encodes
      // RUNS_PER_ROUND runs in one submit so that the host's sync (about 11 ms in Deno) is paid once.
      for (const [i, p] of programs.entries()) best[i] = Math.min(best[i], await timeRuns(gpu, p));
    }
    return candidates[best.indexOf(Math.min(...best))];
  } finally {
    for (const p of programs) p.destroy();
    for (const t of [a, b, out]) t.buffer.destroy();
  }
}

/** Runs of a candidate per timed submit. */
const RUNS_PER_ROUND = 8;

/** Milliseconds per run of `p`, from {@link RUNS_PER_ROUND} runs in one submit and one sync. */
async function timeRuns(gpu: Gpu, p: Program): Promise<number> {
  const encoder = gpu.device.createCommandEncoder({ label: `autotune ${p.label}` });
  for (let i = 0; i < RUNS_PER_ROUND; i++) p.encode(encoder);
  const t0 = performance.now();
  gpu.submit([encoder.finish()]);
  await gpu.sync();
  return (performance.now() - t0) / RUNS_PER_ROUND;
}

const tuners = new WeakMap<Gpu, MatmulTuner>();

/** The autotune state of `gpu`, when {@link enableMatmulAutotune} installed one. */
export function matmulTuner(gpu: Gpu): MatmulTuner | undefined {
  return tuners.get(gpu);
}

/**
 * Turns the autotune on for `gpu`'s products that pass no tile: reads the cache, and installs a chooser that
 * times the candidates of a class met for the first time and saves the choice. Returns the state (null on a
 * GPU adapter, which keeps its `tiled` default).
 */
export async function enableMatmulAutotune(
  gpu: Gpu,
  opts: AutotuneOptions = {},
): Promise<MatmulTuner | null> {
  if (!cpuKernels(gpu)) return null;
  const log = opts.log ?? ((line: string) => console.warn(line));
  const cachePath = opts.cachePath === undefined ? defaultAutotuneCachePath() : opts.cachePath;
  const adapter = await adapterKey(gpu);
  const stored = (await readCache(cachePath, log)).adapters[adapter] ?? {};
  const candidates = opts.candidates ?? AUTOTUNE_CANDIDATES;
  const choices = new Map<string, RegtileTile>();
  for (const [cls, c] of Object.entries(stored)) {
    if (Number.isInteger(c?.tm) && Number.isInteger(c?.tn4) && c.tm >= 4 && c.tm % 4 === 0 && c.tn4 >= 1) {
      choices.set(cls, { kind: "regtile", tm: c.tm, tn4: c.tn4, textures: c.textures === true });
    }
  }
  const tuner: MatmulTuner = { adapter, cachePath, choices, timed: 0 };
  tuners.set(gpu, tuner);
  setMatmulTileChooser(gpu, async (shape) => {
    const cls = shapeClass(shape);
    let tile = choices.get(cls);
    if (!tile && !tunable(shape)) return undefined;
    if (!tile) {
      tile = await timeCandidates(gpu, shape, candidates, opts.reps ?? 3);
      choices.set(cls, tile);
      tuner.timed++;
      await writeCache(tuner, log);
    }
    return tile;
  });
  return tuner;
}

/** Turns the autotune off for `gpu` (products go back to the default tile). */
export function disableMatmulAutotune(gpu: Gpu): void {
  tuners.delete(gpu);
  setMatmulTileChooser(gpu, null);
}
