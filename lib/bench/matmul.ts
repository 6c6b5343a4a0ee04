/**
 * Matmul benchmark: GFLOP/s of square f32 products and of the EAGLE-3 draft's linear layers (forward
 * x·Wᵀ and the two backward products dx = dy·W, dW = dyᵀ·x) at a small row count.
 */
import type { Gpu } from "../gpu/device.ts";
import { Program } from "../gpu/program.ts";
import { type DType, DTYPE_BYTES, Tensor } from "../tensor.ts";
import { matmul, type MatmulOptions, matmulTileFor, tileName } from "../ops/matmul.ts";
import { type BenchOptions, type BenchRow, timeProgram } from "./types.ts";

/** Draft dimensions: Llama-3-8B's EAGLE-3 draft (full) or a scaled-down one (quick). */
interface DraftDims {
  rows: number;
  hidden: number;
  intermediate: number;
  heads: number;
  kvHeads: number;
  headDim: number;
  draftVocab: number;
}

const FULL: DraftDims = {
  rows: 512,
  hidden: 4096,
  intermediate: 14336,
  heads: 32,
  kvHeads: 8,
  headDim: 128,
  draftVocab: 32000,
};

const QUICK: DraftDims = {
  rows: 128,
  hidden: 1024,
  intermediate: 3584,
  heads: 8,
  kvHeads: 2,
  headDim: 128,
  draftVocab: 8000,
};

/** The draft's linear layers as [name, in, out]. */
function draftLayers(d: DraftDims): Array<[string, number, number]> {
  const H = d.hidden;
  return [
    ["fc [3H→H]", 3 * H, H],
    ["qkv [2H→(nh+2nkv)·hd]", 2 * H, (d.heads + 2 * d.kvHeads) * d.headDim],
    ["o_proj [nh·hd→H]", d.heads * d.headDim, H],
    ["gate/up [H→I]", H, d.intermediate],
    ["down [I→H]", d.intermediate, H],
    ["lm_head [H→Vd]", H, d.draftVocab],
  ];
}

/** Deterministic filler values (timing does not depend on them). */
function filler(n: number): Float32Array<ArrayBuffer> {
  return Float32Array.from({ length: n }, (_, i) => ((i * 0.618034) % 1) - 0.5);
}

/** Times one product; returns [ms, note about split-K]. */
async function timeProduct(
  gpu: Gpu,
  label: string,
  a: Tensor,
  b: Tensor,
  out: Tensor,
  opts: MatmulOptions,
  reps: number,
): Promise<[number, string]> {
  const p = new Program(gpu, label);
  try {
    await matmul(p, a, b, out, opts);
    const split = p.dispatches.some((d) => d.label === "matmul.splitk_reduce");
    return [await timeProgram(gpu, p, reps), split ? ", split-K" : ""];
  } finally {
    p.destroy();
  }
}

/**
 * GFLOP/s of square products (256, 512, 1024, and 2048 unless quick) and of the draft's linear layers at a
 * small row count, forward and both backward products. Layers whose f32 weight exceeds the device's binding
 * limit use bf16 weights for the products that read W (forward, dx) when those fit, and are skipped (with a
 * note) otherwise; dW is always f32.
 */
export async function benchMatmul(gpu: Gpu, opts: BenchOptions): Promise<BenchRow[]> {
  const rows: BenchRow[] = [];
  const kernel = tileName(matmulTileFor(gpu));
  const maxBinding = gpu.limits.maxStorageBufferBindingSize;
  const fits = (n: number, dtype: DType) => n * DTYPE_BYTES[dtype] <= maxBinding;

  for (const s of opts.quick ? [256, 512, 1024] : [256, 512, 1024, 2048]) {
    const a = Tensor.fromArray(gpu, filler(s * s), [s, s], "f32", "a");
    const b = Tensor.fromArray(gpu, filler(s * s), [s, s], "f32", "b");
    const c = Tensor.empty(gpu, [s, s], "f32", "c");
    const reps = s <= 512 ? 10 : opts.quick ? 2 : 3;
    const [ms, split] = await timeProduct(gpu, `matmul ${s}`, a, b, c, {}, reps);
    rows.push({
      group: "matmul",
      name: "A·B f32",
      shape: `${s}x${s}x${s}`,
      ms,
      gflops: 2 * s ** 3 / (ms * 1e6),
      note: kernel + split,
    });
    for (const t of [a, b, c]) t.destroy();
  }

  const d = opts.quick ? QUICK : FULL;
  const R = d.rows;
  const reps = opts.quick ? 2 : 3;
  for (const [layer, inF, outF] of draftLayers(d)) {
    const wDtype: DType | null = fits(inF * outF, "f32") ? "f32" : fits(inF * outF, "bf16") ? "bf16" : null;
    const mib = (n: number) => `${(n / 2 ** 20).toFixed(0)} MiB`;
    const x = Tensor.fromArray(gpu, filler(R * inF), [R, inF], "f32", "x");
    const dy = Tensor.fromArray(gpu, filler(R * outF), [R, outF], "f32", "dy");
    const y = Tensor.empty(gpu, [R, outF], "f32", "y");
    const dx = Tensor.empty(gpu, [R, inF], "f32", "dx");
    const flops = 2 * R * inF * outF;
    const wNote = wDtype === "f32"
      ? ""
      : `, W ${wDtype} (f32 W is ${mib(4 * inF * outF)} > binding ${mib(maxBinding)})`;
    if (wDtype === null) {
      for (const name of ["fwd x·Wᵀ", "dx = dy·W"]) {
        rows.push({
          group: "matmul",
          name: `${layer} ${name}`,
          shape: `${R}x${outF}x${inF}`,
          ms: 0,
          note: `skipped: W [${outF}, ${inF}] is ${mib(2 * inF * outF)} even in bf16, over the device's ` +
            `binding limit of ${mib(maxBinding)}`,
        });
      }
    } else {
      const w = Tensor.fromArray(gpu, filler(inF * outF), [outF, inF], wDtype, "w");
      const [msF, splitF] = await timeProduct(gpu, `${layer} fwd`, x, w, y, { transB: true }, reps);
      rows.push({
        group: "matmul",
        name: `${layer} fwd x·Wᵀ`,
        shape: `${R}x${outF}x${inF}`,
        ms: msF,
        gflops: flops / (msF * 1e6),
        note: kernel + splitF + wNote,
      });
      const [msX, splitX] = await timeProduct(gpu, `${layer} dx`, dy, w, dx, {}, reps);
      rows.push({
        group: "matmul",
        name: `${layer} dx = dy·W`,
        shape: `${R}x${inF}x${outF}`,
        ms: msX,
        gflops: flops / (msX * 1e6),
        note: kernel + splitX + wNote,
      });
      w.destroy();
    }
    if (fits(inF * outF, "f32")) {
      const dw = Tensor.empty(gpu, [outF, inF], "f32", "dw");
      const [msW, splitW] = await timeProduct(gpu, `${layer} dW`, dy, x, dw, { transA: true }, reps);
      rows.push({
        group: "matmul",
        name: `${layer} dW = dyᵀ·x`,
        shape: `${outF}x${inF}x${R}`,
        ms: msW,
        gflops: flops / (msW * 1e6),
        note: kernel + splitW,
      });
      dw.destroy();
    } else {
      rows.push({
        group: "matmul",
        name: `${layer} dW = dyᵀ·x`,
        shape: `${outF}x${inF}x${R}`,
        ms: 0,
        note: `skipped: dW [${outF}, ${inF}] f32 is ${
          mib(4 * inF * outF)
        }, over the device's binding limit of ${mib(maxBinding)}`,
      });
    }
    for (const t of [x, dy, y, dx]) t.destroy();
  }
  return rows;
}
