/**
 * A quick check that the engine computes correctly on this device: the forward kernel of ten op families
 * (elementwise, matmul, rmsnorm, rope, swiglu, softmax, embedding, attention, reduce, convert) runs once on a
 * tiny shape, in the kernel variant this adapter gets by default (lib/ops/variant.ts), and is compared with
 * its CPU reference. Backward kernels, the loss, AdamW and the EAGLE-3 teacher are covered by the test suite,
 * not here. Used by `deno task demo --self-check`; useful after a driver change.
 */
import type { Gpu } from "../gpu/device.ts";
import { type Program, runOnce } from "../gpu/program.ts";
import { type DType, type HostArray, Tensor } from "../tensor.ts";
import { mulberry32 } from "../data/random.ts";
import { axpby, axpbyCpu } from "../ops/elementwise.ts";
import { matmul, matmulCpu } from "../ops/matmul.ts";
import { rmsnormCpu, rmsnormForward } from "../ops/rmsnorm.ts";
import { ropeCpu, ropeForward, ropeTable } from "../ops/rope.ts";
import { swigluCpu, swigluForward } from "../ops/swiglu.ts";
import { softmaxCpu, softmaxForward } from "../ops/softmax.ts";
import { embeddingCpu, embeddingForward } from "../ops/embedding.ts";
import { attentionCpu, type AttentionDims, attentionForward } from "../ops/attention.ts";
import { rowSum, rowSumCpu } from "../ops/reduce.ts";
import { convert, convertCpu } from "../ops/convert.ts";

/** The outcome of one check. */
export interface CheckResult {
  /** The op family. */
  name: string;
  /** The largest difference is within the family's tolerance. */
  ok: boolean;
  /** `max |gpu - cpu| = …`, or the error the family raised. */
  detail: string;
}

/** Tensors of one check, destroyed when it ends. */
interface Tensors {
  /** A tensor holding `data`. */
  input(data: HostArray, shape: number[], dtype?: DType): Tensor;
  /** An uninitialised tensor. */
  empty(shape: number[], dtype?: DType): Tensor;
}

/** One family's check: records its kernel into `p` and returns its output tensor and the CPU reference. */
type Recorder = (p: Program, t: Tensors) => Promise<[Tensor, ArrayLike<number>]>;

function maxDiff(a: ArrayLike<number>, b: ArrayLike<number>): number {
  if (a.length !== b.length) return Infinity;
  let m = 0;
  for (let i = 0; i < a.length; i++) m = Math.max(m, Math.abs(a[i] - b[i]));
  return Number.isNaN(m) ? Infinity : m;
}

/** `n` values uniform in [-1, 1) from a mulberry32 stream seeded with `seed`. */
function values(n: number, seed: number): Float32Array<ArrayBuffer> {
  const rand = mulberry32(seed);
  return Float32Array.from({ length: n }, () => 2 * rand() - 1);
}

/** Runs one family's recorder on the device and compares its output with the CPU reference. */
async function runCheck(gpu: Gpu, name: string, tol: number, record: Recorder): Promise<CheckResult> {
  const tensors: Tensor[] = [];
  const keep = (x: Tensor) => (tensors.push(x), x);
  const label = () => `self-check ${name} ${tensors.length}`;
  const t: Tensors = {
    input: (data, shape, dtype = "f32") => keep(Tensor.fromArray(gpu, data, shape, dtype, label())),
    empty: (shape, dtype = "f32") => keep(Tensor.empty(gpu, shape, dtype, label())),
  };
  try {
    let out: Tensor | null = null;
    let want: ArrayLike<number> = [];
    await runOnce(gpu, `self-check ${name}`, async (p) => {
      [out, want] = await record(p, t);
    });
    const d = maxDiff(await out!.read(), want);
    return { name, ok: d <= tol, detail: `max |gpu - cpu| = ${d.toExponential(2)}` };
  } catch (e) {
    return { name, ok: false, detail: (e as Error).message };
  } finally {
    for (const x of tensors) x.destroy();
  }
}

const B = 2, T = 5, NH = 4, NKV = 2, HD = 8, H = 12, V = 16;

/** The ten families with their tolerances (f32 kernels against f64 references, values of order 1). */
const CHECKS: Array<[name: string, tol: number, record: Recorder]> = [
  ["elementwise", 1e-6, async (p, { input, empty }) => {
    const a = values(1000, 1), b = values(1000, 2);
    const out = empty([1000]);
    await axpby(p, 2, input(a, [1000]), -1, input(b, [1000]), out);
    return [out, axpbyCpu(2, a, -1, b)];
  }],
  ["matmul", 1e-5, async (p, { input, empty }) => {
    const a = values(7 * 13, 3), b = values(13 * 9, 4);
    const out = empty([7, 9]);
    await matmul(p, input(a, [7, 13]), input(b, [13, 9]), out);
    return [out, matmulCpu(a, [7, 13], b, [13, 9])];
  }],
  ["rmsnorm", 1e-5, async (p, { input, empty }) => {
    const x = values(T * H, 5), w = values(H, 6);
    const y = empty([T, H]);
    await rmsnormForward(p, input(x, [T, H]), input(w, [H]), y, empty([T]), { eps: 1e-6 });
    return [y, rmsnormCpu(x, w, T, H, 1e-6).y];
  }],
  ["rope", 1e-5, async (p, { input, empty }) => {
    const shape: [number, number, number, number] = [B, T, NH, HD];
    const x = values(B * T * NH * HD, 7);
    const cfg = { ropeTheta: 10000, ropeScaling: { type: "default" as const }, maxPositionEmbeddings: 16 };
    const { cos, sin } = ropeTable(cfg, HD, 16);
    const out = empty(shape);
    await ropeForward(p, input(x, shape), out, input(cos, [16, HD / 2]), input(sin, [16, HD / 2]), {
      positionOffset: 3,
    });
    return [out, ropeCpu(x, cos, sin, shape, 3)];
  }],
  ["swiglu", 1e-5, async (p, { input, empty }) => {
    const g = values(300, 8), u = values(300, 9);
    const out = empty([300]);
    await swigluForward(p, input(g, [300]), input(u, [300]), out);
    return [out, swigluCpu(g, u)];
  }],
  ["softmax", 1e-6, async (p, { input, empty }) => {
    const x = values(T * V, 10).map((v) => 4 * v);
    const y = empty([T, V]);
    await softmaxForward(p, input(x, [T, V]), y);
    return [y, softmaxCpu(x, V)];
  }],
  ["embedding", 0, async (p, { input, empty }) => {
    const table = values(V * H, 11), ids = [3, 0, 15, 7, 3];
    const out = empty([ids.length, H]);
    await embeddingForward(p, input(Int32Array.from(ids), [ids.length], "i32"), input(table, [V, H]), out);
    return [out, embeddingCpu(ids, table, V, H)];
  }],
  ["attention", 1e-5, async (p, { input, empty }) => {
    const dims: AttentionDims = {
      batch: B,
      queryLen: T,
      keyLen: T,
      heads: NH,
      kvHeads: NKV,
      headDim: HD,
      diagSteps: 0,
    };
    const q = values(B * T * NH * HD, 12), k = values(B * T * NKV * HD, 13), v = values(B * T * NKV * HD, 14);
    const lengths = [T, T - 2];
    const out = empty([B, T, NH, HD]);
    await attentionForward(p, {
      q: input(q, [B, T, NH, HD]),
      k: input(k, [B, T, NKV, HD]),
      v: input(v, [B, T, NKV, HD]),
      lengths: input(Int32Array.from(lengths), [B], "i32"),
      out,
      lse: empty([B, NH, T]),
    }, { causal: true });
    return [out, attentionCpu({ q, k, v, lengths }, dims, { causal: true }).out];
  }],
  ["reduce", 1e-5, async (p, { input, empty }) => {
    const x = values(T * 37, 15);
    const out = empty([T]);
    await rowSum(p, input(x, [T, 37]), out);
    return [out, rowSumCpu(x, 37)];
  }],
  ["convert", 0, async (p, { input, empty }) => {
    const x = values(64, 16).map((v) => 100 * v);
    const bf16 = empty([64], "bf16");
    const back = empty([64]);
    await convert(p, input(x, [64]), bf16);
    await convert(p, bf16, back);
    return [back, convertCpu(convertCpu(x, "f32", "bf16"), "bf16", "f32")];
  }],
];

/** Runs every family's check (see the module comment) and returns one result per family, in order. */
export async function selfCheck(gpu: Gpu): Promise<CheckResult[]> {
  const results: CheckResult[] = [];
  for (const [name, tol, record] of CHECKS) results.push(await runCheck(gpu, name, tol, record));
  return results;
}
