/**
 * A target's sparse MLP weights on the device (lib/ops/moe.ts `MoeWeights`), read from the checkpoint layouts
 * the published models use: Qwen's one tensor per expert and projection (stacked here into blocks of whole
 * experts), and GPT-OSS's and Llama 4's one tensor per projection for every expert, in bf16 ([E, K, N],
 * uploaded as is and read transposed) or (GPT-OSS) in MXFP4 (`*_blocks` and `*_scales` bytes, uploaded as u32
 * words and decoded by the grouped matmul), with GPT-OSS's expert and router biases and DeepSeek-V3's routing
 * correction bias (`mlp.gate.e_score_correction_bias`). Every block holds whole
 * experts and fits one storage binding.
 */
import { ShapeError } from "../gpu/errors.ts";
import { Tensor } from "../tensor.ts";
import type { RawTensor } from "../io/safetensors.ts";
import type { MoeLayerNames } from "./config.ts";
import { expertBlocks, expertsPerBlock, stackedName } from "./target_memory.ts";
import type { ExpertBlock, MoeWeights } from "../ops/moe.ts";
import type { TargetWeightLoader } from "./target.ts";

/** A sparse MLP's router (and bias), experts and shared expert. */
export async function loadMoeWeights(load: TargetWeightLoader, n: MoeLayerNames): Promise<MoeWeights> {
  const router = await load.matrix(n.router);
  const routerBias = n.routerBias ? await load.vector(n.routerBias) : null;
  const correctionBias = n.correctionBias ? await load.vector(n.correctionBias) : null;
  const f = n.fused;
  const experts = f
    ? {
      gate: [],
      up: [],
      gateUp: await fusedExperts(load, f.gateUp, f.mxfp4, f.bias),
      down: await fusedExperts(load, f.down, f.mxfp4, f.bias),
    }
    : {
      gate: await stackedExperts(load, n.gate),
      up: await stackedExperts(load, n.up),
      down: await stackedExperts(load, n.down),
    };
  const shared = n.shared
    ? {
      gate: await load.matrix(n.shared.gate),
      up: await load.matrix(n.shared.up),
      down: await load.matrix(n.shared.down),
      gateProj: n.shared.gateProj ? await load.matrix(n.shared.gateProj) : null,
    }
    : null;
  return { router, routerBias, correctionBias, ...experts, shared };
}

/** Experts' matrices (one per tensor, one shape and dtype) stacked along their rows, in blocks. */
async function stackedExperts(load: TargetWeightLoader, names: string[]): Promise<ExpertBlock[]> {
  const info = load.ckpt.info(names[0]);
  const bytes = info.shape.reduce((a, b) => a * b, 1) * load.elementBytes(info.dtype);
  const per = expertsPerBlock(names.length, bytes, load.maxBlockBytes, names[0]);
  const out: ExpertBlock[] = [];
  for (const { first, count } of expertBlocks(names.length, per)) {
    out.push({ first, count, tensor: await stacked(load, names.slice(first, first + count)) });
  }
  return out;
}

/** Matrices of one shape and dtype stacked along their rows into one tensor ([n·rows, cols]). */
async function stacked(load: TargetWeightLoader, names: string[]): Promise<Tensor> {
  const first = load.ckpt.info(names[0]);
  const parts: RawTensor[] = [];
  for (const name of names) {
    const raw = await load.ckpt.read(name);
    if (raw.dtype !== first.dtype || raw.shape.join() !== first.shape.join()) {
      throw new ShapeError(
        `${load.ckpt.info(name).file}: tensor ${name} is ${raw.dtype} [${raw.shape}], ` +
          `expected ${first.dtype} [${first.shape}] as ${names[0]}`,
      );
    }
    parts.push(raw);
  }
  const shape = [names.length * first.shape[0], ...first.shape.slice(1)];
  return load.upload(
    names[0],
    { dtype: first.dtype, shape, bytes: concat(parts.map((r) => r.bytes)) },
    stackedName(names),
  );
}

/**
 * GPT-OSS's and Llama 4's experts of one projection (`name`: bf16 [E, K, N], or MXFP4 `name_blocks`
 * [E, N, K/32, 16] and `name_scales` [E, N, K/32]) and, with `bias`, their bias `name_bias` [E, N], in blocks
 * of whole experts.
 */
async function fusedExperts(
  load: TargetWeightLoader,
  name: string,
  mxfp4: boolean,
  bias: boolean,
): Promise<ExpertBlock[]> {
  const main = mxfp4 ? `${name}_blocks` : name;
  const shape = load.ckpt.info(main).shape, E = shape[0];
  const expertBytes = mxfp4
    ? shape.slice(1).reduce((a, b) => a * b, 1) // one code byte per two elements
    : shape.slice(1).reduce((a, b) => a * b, 1) * load.elementBytes(load.ckpt.info(main).dtype);
  const per = expertsPerBlock(E, expertBytes, load.maxBlockBytes, main);
  const out: ExpertBlock[] = [];
  for (const { first, count } of expertBlocks(E, per)) {
    const range = `[${first}:${first + count}]`, end = first + count;
    const block: ExpertBlock = {
      first,
      count,
      tensor: mxfp4
        ? words(load, main, await load.ckpt.readRows(main, first, end), `${main}${range}`)
        : flatUpload(load, main, await load.ckpt.readRows(main, first, end), `${main}${range}`),
      bias: bias
        ? load.vectorOf(
          `${name}_bias`,
          await load.ckpt.readRows(`${name}_bias`, first, end),
          `${name}_bias${range}`,
        )
        : null,
    };
    if (mxfp4) {
      block.scales = words(
        load,
        `${name}_scales`,
        await load.ckpt.readRows(`${name}_scales`, first, end),
        `${name}_scales${range}`,
      );
    } else {
      block.kn = true;
    }
    out.push(block);
  }
  return out;
}

/** Uploads [count, K, N] as the matrix [count·K, N]. */
function flatUpload(load: TargetWeightLoader, name: string, raw: RawTensor, label: string): Tensor {
  const [count, K, N] = raw.shape;
  return load.upload(name, { ...raw, shape: [count * K, N] }, label);
}

/** Raw bytes (MXFP4 codes or scales) as u32 words, zero-padded to a whole word (not checked for finiteness). */
function words(load: TargetWeightLoader, name: string, raw: RawTensor, label: string): Tensor {
  if (raw.dtype !== "U8") {
    throw new ShapeError(`${load.ckpt.info(name).file}: tensor ${name} is ${raw.dtype}, MXFP4 stores U8`);
  }
  const padded = new Uint8Array(Math.ceil(raw.bytes.byteLength / 4) * 4);
  padded.set(raw.bytes);
  const data = new Uint32Array(padded.buffer);
  return Tensor.fromArray(load.gpu, data, [data.length], "u32", label);
}

/** Byte arrays end to end. */
function concat(parts: Uint8Array[]): Uint8Array<ArrayBuffer> {
  const out = new Uint8Array(parts.reduce((n, b) => n + b.byteLength, 0));
  let at = 0;
  for (const b of parts) {
    out.set(b, at);
    at += b.byteLength;
  }
  return out;
}
