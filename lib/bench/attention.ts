/**
 * Attention speed: forward and backward milliseconds and GFLOP/s at draft-like shapes (B 1, T 256/512, 32 query
 * heads, 8 kv heads, hd 128; small shapes in quick mode), causal, with and without the TTT diagonal keys (S = 6).
 *
 * FLOPs counted: forward 4·B·nh·hd·(T²/2 + T·S) (q·kᵀ and P·v over the causal half plus the diagonal keys);
 * backward 2.5× the forward (P is recomputed, then dP = dO·vᵀ, dV, dK and dQ).
 */
import { mulberry32 } from "../data/random.ts";
import type { Gpu } from "../gpu/device.ts";
import { Program } from "../gpu/program.ts";
import { Tensor } from "../tensor.ts";
import { attentionBackward, attentionForward, type AttentionKernel } from "../ops/attention.ts";
import { type BenchOptions, type BenchRow, timeProgram } from "./types.ts";

interface Shape {
  B: number;
  T: number;
  nh: number;
  nkv: number;
  hd: number;
  S: number;
}

function randomTensor(gpu: Gpu, shape: number[], label: string, seed: number): Tensor {
  let n = 1;
  for (const d of shape) n *= d;
  const rand = mulberry32(seed);
  const data = Float32Array.from({ length: n }, () => rand() - 0.5);
  return Tensor.fromArray(gpu, data, shape, "f32", label);
}

async function benchShape(gpu: Gpu, s: Shape, reps: number, kernel?: AttentionKernel): Promise<BenchRow[]> {
  const { B, T, nh, nkv, hd, S } = s;
  const qShape = [B, T, nh, hd], kShape = [B, T, nkv, hd], dShape = [S, B, T, nkv, hd];
  const t = {
    q: randomTensor(gpu, qShape, "q", 1),
    k: randomTensor(gpu, kShape, "k", 2),
    v: randomTensor(gpu, kShape, "v", 3),
    kd: S ? randomTensor(gpu, dShape, "kd", 4) : null,
    vd: S ? randomTensor(gpu, dShape, "vd", 5) : null,
    lengths: Tensor.fromArray(gpu, new Array(B).fill(T), [B], "i32", "lengths"),
    out: Tensor.empty(gpu, qShape, "f32", "out"),
    lse: Tensor.empty(gpu, [B, nh, T], "f32", "lse"),
    dout: randomTensor(gpu, qShape, "dout", 6),
    dq: Tensor.empty(gpu, qShape, "f32", "dq"),
    dk: Tensor.empty(gpu, kShape, "f32", "dk"),
    dv: Tensor.empty(gpu, kShape, "f32", "dv"),
    dkd: S ? Tensor.empty(gpu, dShape, "f32", "dkd") : null,
    dvd: S ? Tensor.empty(gpu, dShape, "f32", "dvd") : null,
  };
  const opts = { causal: true, kernel };
  const forward = new Program(gpu, "attention forward");
  await attentionForward(forward, t, opts);
  const backward = new Program(gpu, "attention backward");
  await attentionBackward(backward, t, opts);
  const fwdMs = await timeProgram(gpu, forward, reps);
  const bwdMs = await timeProgram(gpu, backward, reps);
  forward.destroy();
  backward.destroy();
  for (const x of Object.values(t)) x?.destroy();

  const fwdFlops = 4 * B * nh * hd * (T * T / 2 + T * S);
  const shape = `B${B} T${T} nh${nh} nkv${nkv} hd${hd} S${S}`;
  const note = `causal${kernel ? `, ${kernel} kernels` : ""}`;
  return [
    { group: "attention", name: "forward", shape, ms: fwdMs, gflops: fwdFlops / fwdMs / 1e6, note },
    { group: "attention", name: "backward", shape, ms: bwdMs, gflops: 2.5 * fwdFlops / bwdMs / 1e6, note },
  ];
}

/** Forward and backward attention at draft-like shapes, without and with TTT diagonal keys. */
export async function benchAttention(gpu: Gpu, opts: BenchOptions = {}): Promise<BenchRow[]> {
  const shapes: Shape[] = opts.quick
    ? [{ B: 1, T: 128, nh: 8, nkv: 2, hd: 64, S: 0 }, { B: 1, T: 128, nh: 8, nkv: 2, hd: 64, S: 6 }]
    : [
      { B: 1, T: 256, nh: 32, nkv: 8, hd: 128, S: 0 },
      { B: 1, T: 256, nh: 32, nkv: 8, hd: 128, S: 6 },
      { B: 1, T: 512, nh: 32, nkv: 8, hd: 128, S: 0 },
      { B: 1, T: 512, nh: 32, nkv: 8, hd: 128, S: 6 },
    ];
  const reps = opts.quick ? 2 : 5;
  const rows: BenchRow[] = [];
  for (const s of shapes) rows.push(...await benchShape(gpu, s, reps));
  return rows;
}
