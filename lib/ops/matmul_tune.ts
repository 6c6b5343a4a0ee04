/**
 * Matmul autotune: times candidate kernel tiles on a representative product once per adapter, records the
 * fastest with `setMatmulTile` (used by every later `matmul` on that adapter) and optionally keeps the choice
 * in a JSON file whose path the caller gives, keyed by `gpu.adapterKey()`.
 *
 * File format: `{"version": 1, "tiles": {"<adapterKey>": {"kind": "regtile", "tm": 16, "tn4": 4}, ...}}`.
 */
import type { Gpu } from "../gpu/device.ts";
import { Program } from "../gpu/program.ts";
import { Tensor } from "../tensor.ts";
import { timeProgram } from "../bench/types.ts";
import { checkTile, isCpuAdapter, matmul, type MatmulTile, setMatmulTile, tileName } from "./matmul.ts";

/** Candidates for CPU adapters (Mesa lavapipe/llvmpipe). */
export const CPU_CANDIDATES: MatmulTile[] = [
  { kind: "regtile", tm: 16, tn4: 4 },
  { kind: "regtile", tm: 16, tn4: 8 },
  { kind: "regtile", tm: 32, tn4: 4 },
  { kind: "regtile", tm: 32, tn4: 8 },
];

/** Candidates for GPUs. */
export const GPU_CANDIDATES: MatmulTile[] = [
  { kind: "tiled", bm: 64, bn: 64, bk: 16 },
  { kind: "tiled", bm: 64, bn: 64, bk: 8 },
  { kind: "tiled", bm: 32, bn: 64, bk: 16 },
  { kind: "tiled", bm: 64, bn: 128, bk: 8 },
  { kind: "tiled", bm: 128, bn: 64, bk: 8 },
];

/** Options of {@link tuneMatmul}. */
export interface TuneOptions {
  /** JSON file to read a previous choice from and to write the new one to (nothing is read or written without it). */
  cachePath?: string;
  /** Measure again even when the file has a choice for this adapter. */
  force?: boolean;
  /** Side of the square f32 product timed (default 512 on CPU adapters, 2048 on GPUs). */
  size?: number;
  /** Runs per candidate (default 3 on CPU adapters, 20 on GPUs). */
  reps?: number;
  /** Candidates (default {@link CPU_CANDIDATES} or {@link GPU_CANDIDATES}); those the device cannot run are skipped. */
  candidates?: MatmulTile[];
}

/** What {@link tuneMatmul} chose, and the measurements behind it (empty when read from the file). */
export interface TuneResult {
  adapterKey: string;
  tile: MatmulTile;
  /** GFLOP/s per measured candidate. */
  measured: Array<{ tile: MatmulTile; gflops: number }>;
  /** The choice came from `cachePath`. */
  fromCache: boolean;
}

interface TuneFile {
  version: 1;
  tiles: Record<string, MatmulTile>;
}

/** Reads the tuning file, or an empty one when it does not exist. */
async function readTuneFile(path: string): Promise<TuneFile> {
  let text: string;
  try {
    text = await Deno.readTextFile(path);
  } catch (e) {
    if (e instanceof Deno.errors.NotFound) return { version: 1, tiles: {} };
    throw e;
  }
  const parsed = JSON.parse(text) as TuneFile;
  if (parsed?.version !== 1 || typeof parsed.tiles !== "object") {
    throw new Error(`${path}: not a matmul tuning file (expected {"version": 1, "tiles": {...}})`);
  }
  return parsed;
}

/**
 * Chooses the matmul tile for `gpu`: from `cachePath` when it holds a valid choice for this adapter, else by
 * timing each candidate on a square f32 product (a few seconds on a CPU adapter). Records the choice for
 * later `matmul` calls and writes it to `cachePath` (atomically) when one is given.
 */
export async function tuneMatmul(gpu: Gpu, opts: TuneOptions = {}): Promise<TuneResult> {
  const adapterKey = gpu.adapterKey();
  const file = opts.cachePath ? await readTuneFile(opts.cachePath) : null;
  const cached = file?.tiles[adapterKey];
  if (cached && !opts.force) {
    try {
      checkTile(gpu, cached);
      setMatmulTile(gpu, cached);
      return { adapterKey, tile: cached, measured: [], fromCache: true };
    } catch {
      // An unusable entry (other limits): measure again.
    }
  }
  const cpu = isCpuAdapter(gpu);
  const size = opts.size ?? (cpu ? 512 : 2048);
  const reps = opts.reps ?? (cpu ? 3 : 20);
  const candidates = (opts.candidates ?? (cpu ? CPU_CANDIDATES : GPU_CANDIDATES)).filter((t) => {
    try {
      checkTile(gpu, t);
      return true;
    } catch {
      return false;
    }
  });
  if (candidates.length === 0) throw new Error("tuneMatmul: no candidate tile fits this device");
  const a = Tensor.fromArray(gpu, ramp(size * size, 0.37), [size, size], "f32", "tune a");
  const b = Tensor.fromArray(gpu, ramp(size * size, 0.61), [size, size], "f32", "tune b");
  const c = Tensor.empty(gpu, [size, size], "f32", "tune c");
  const measured: TuneResult["measured"] = [];
  try {
    for (const tile of candidates) {
      const p = new Program(gpu, `tune ${tileName(tile)}`);
      try {
        await matmul(p, a, b, c, { tile, splitK: 1 });
        const ms = await timeProgram(gpu, p, reps);
        measured.push({ tile, gflops: 2 * size ** 3 / (ms * 1e6) });
      } finally {
        p.destroy();
      }
    }
  } finally {
    for (const t of [a, b, c]) t.destroy();
  }
  const best = measured.reduce((x, y) => (y.gflops > x.gflops ? y : x));
  setMatmulTile(gpu, best.tile);
  if (opts.cachePath && file) {
    file.tiles[adapterKey] = best.tile;
    const tmp = `${opts.cachePath}.tmp-${Deno.pid}`;
    await Deno.writeTextFile(tmp, JSON.stringify(file, null, 2) + "\n");
    await Deno.rename(tmp, opts.cachePath);
  }
  return { adapterKey, tile: best.tile, measured, fromCache: false };
}

/** Deterministic values in [-0.5, 0.5) (the timing does not depend on them). */
function ramp(n: number, step: number): Float32Array<ArrayBuffer> {
  return Float32Array.from({ length: n }, (_, i) => ((i * step) % 1) - 0.5);
}
