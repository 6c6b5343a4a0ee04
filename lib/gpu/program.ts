/**
 * Programs: prebuilt lists of dispatches (pipeline, bind group, workgroup counts) that are replayed into one
 * compute pass of one command encoder. Bind groups and uniform buffers are made once, when the program is
 * built, so replaying a training step costs about 1.4 µs of encoding per dispatch.
 */
import type { Gpu } from "./device.ts";
import type { KernelSpec } from "./kernel.ts";
import { LimitError } from "./errors.ts";
import { type DType, Tensor } from "../tensor.ts";
import { type BufferRange, rangeOf, TextureContents, writableBindings } from "./texture_contents.ts";

/** Scalar kinds of a uniform field. */
export type ParamKind = "u32" | "i32" | "f32";

/** Uniform values for one dispatch, in the order of the WGSL struct's fields (all 4-byte scalars). */
export class Params {
  /** The packed bytes (a multiple of 16, as uniform buffers need). */
  readonly bytes: ArrayBuffer;

  /**
   * Packs `fields` as little-endian 4-byte scalars, padded with zeros to a multiple of 16 bytes (at least
   * 16).
   */
  constructor(fields: Array<[ParamKind, number]>) {
    this.bytes = new ArrayBuffer(Math.max(16, Math.ceil(fields.length / 4) * 16));
    const view = new DataView(this.bytes);
    fields.forEach(([kind, value], i) => {
      if (kind === "f32") view.setFloat32(4 * i, value, true);
      else if (kind === "i32") view.setInt32(4 * i, value, true);
      else view.setUint32(4 * i, value, true);
    });
  }
}

/** Shorthand for `new Params(fields)`. */
export function params(...fields: Array<[ParamKind, number]>): Params {
  return new Params(fields);
}

/** What can be bound at one binding index: a tensor, uniform params, a raw buffer range or a texture view. */
export type Binding = Tensor | Params | GPUBufferBinding | GPUTextureView;

/** One recorded dispatch. */
export interface Dispatch {
  /** Name of the dispatch, shown in errors and profiles (the kernel's name unless given). */
  label: string;
  /** The compiled compute pipeline, shared through the device's pipeline cache. */
  pipeline: GPUComputePipeline;
  /** The bind group made once when the dispatch was added; binding i is `@group(0) @binding(i)`. */
  bindGroup: GPUBindGroup;
  /** Workgroup counts in x, y, z (a plain count given to {@link Program.add} is folded into x and y). */
  workgroups: [number, number, number];
  /** Floating-point operations, where the op states them (a multiply-add counts 2). */
  flops?: number;
  /** Bytes of the buffers and textures bound (each range once): the least traffic if it reads them all. */
  bytes: number;
  /** The buffer ranges bound where the kernel declares `var<storage, read_write>`. */
  writes: BufferRange[];
}

/**
 * Workgroup counts for `n` workgroups laid out in x then y, since one dimension holds at most
 * maxComputeWorkgroupsPerDimension (65535). Kernels recover the linear index as `wg.x + wg.y * nwg.x` and
 * return when it is `>= n`.
 */
export function foldGrid(gpu: Gpu, n: number): [number, number, number] {
  const max = gpu.limits.maxComputeWorkgroupsPerDimension;
  if (n <= max) return [Math.max(1, n), 1, 1];
  const y = Math.ceil(n / max);
  if (y > max) throw new LimitError(`dispatch of ${n} workgroups exceeds ${max}² workgroups`);
  return [Math.ceil(n / y), y, 1];
}

/**
 * Bytes of the storage ranges among `bindings` (tensors and raw ranges, each range counted once) and of the
 * texture views among them whose sizes `viewBytes` knows.
 */
function boundBytes(bindings: Array<Binding | null>, viewBytes: WeakMap<GPUTextureView, number>): number {
  const seen = new Map<GPUBuffer, Set<string>>();
  let bytes = 0;
  for (const b of bindings) {
    if (b === null || b instanceof Params) continue;
    if (b instanceof GPUTextureView) {
      bytes += viewBytes.get(b) ?? 0;
      continue;
    }
    const range = b instanceof Tensor ? b.binding() : b;
    const size = range.size ?? range.buffer.size - (range.offset ?? 0);
    const ranges = seen.get(range.buffer) ?? new Set<string>();
    const key = `${range.offset ?? 0}+${size}`;
    if (ranges.has(key)) continue;
    seen.set(range.buffer, ranges.add(key));
    bytes += size;
  }
  return bytes;
}

/** The ranges of `bindings` at the indices `code` declares writable. */
function writtenRanges(code: string, bindings: Array<Binding | null>): BufferRange[] {
  const out: BufferRange[] = [];
  for (const i of writableBindings(code)) {
    const b = bindings[i];
    if (!b || b instanceof Params || b instanceof GPUTextureView) continue;
    out.push(rangeOf(b instanceof Tensor ? b.binding() : b));
  }
  return out;
}

/** A list of dispatches built once and run many times. */
export class Program {
  /** The recorded dispatches, in the order they run. */
  readonly dispatches: Dispatch[] = [];
  #uniforms: GPUBuffer[] = [];
  #owned: Tensor[] = [];
  #transients = new Map<string, Tensor>();
  #textures = new Map<string, GPUTexture>();
  #ownTextures = new Map<GPUBuffer, Map<string, GPUTexture>>();
  #allTextures: GPUTexture[] = [];
  #viewBytes = new WeakMap<GPUTextureView, number>();
  /** What the textures hold as the recording stands (lib/gpu/texture_contents.ts). */
  readonly textures: TextureContents = new TextureContents();

  /** An empty program on `gpu`; `label` names it in errors and in the command encoder. */
  constructor(readonly gpu: Gpu, readonly label: string) {}

  /**
   * Appends a dispatch of `kernel` with `bindings[i]` at `@group(0) @binding(i)` (`null` skips an index the
   * entry point does not use); `flops`, where the caller knows it, goes to the profile.
   */
  async add(
    kernel: KernelSpec,
    bindings: Array<Binding | null>,
    workgroups: number | [number, number, number],
    label = kernel.name,
    flops?: number,
  ): Promise<void> {
    const pipeline = await this.gpu.pipelines.get(kernel);
    const entries: GPUBindGroupEntry[] = [];
    bindings.forEach((b, i) => {
      if (b === null) return;
      entries.push({ binding: i, resource: this.#resource(b, label) });
    });
    const bindGroup = await this.gpu.scoped(
      `kernel ${label} (bind group)`,
      () => this.gpu.device.createBindGroup({ label, layout: pipeline.getBindGroupLayout(0), entries }),
    );
    const wg: [number, number, number] = typeof workgroups === "number"
      ? foldGrid(this.gpu, workgroups)
      : workgroups;
    const max = this.gpu.limits.maxComputeWorkgroupsPerDimension;
    if (wg.some((n) => n > max)) {
      throw new LimitError(
        `kernel ${label}: workgroups [${wg}] exceed maxComputeWorkgroupsPerDimension ${max}`,
      );
    }
    const writes = writtenRanges(kernel.code, bindings);
    this.textures.written(writes, label);
    this.dispatches.push({
      label,
      pipeline,
      bindGroup,
      workgroups: wg,
      flops,
      bytes: boundBytes(bindings, this.#viewBytes),
      writes,
    });
  }

  /** Appends every dispatch of another program (which must stay alive as long as this one). */
  append(other: Program): void {
    for (const d of other.dispatches) this.textures.written(d.writes, d.label);
    this.dispatches.push(...other.dispatches);
  }

  /**
   * Declares `tensors` not written by the dispatches recorded from now on (a training step's weights): each
   * is packed into a texture of its own, once per run ({@link ownTexture}), and recording a dispatch that
   * binds one writable throws.
   */
  readOnly(...tensors: Tensor[]): void {
    // The whole range, also of a tensor over one binding (its row blocks bind as views of it).
    for (const t of tensors) {
      const range = { buffer: t.buffer, offset: t.byteOffset, size: t.byteLength };
      this.textures.declareReadOnly(range, `tensor ${t.label}`);
    }
  }

  #resource(b: Binding, label: string): GPUBufferBinding | GPUTextureView {
    if (b instanceof Tensor) return b.binding();
    if (b instanceof GPUTextureView) return b;
    if (b instanceof Params) {
      const buffer = this.gpu.createBuffer(
        b.bytes.byteLength,
        GPUBufferUsage.UNIFORM | GPUBufferUsage.COPY_DST,
        `${label} params`,
      );
      this.gpu.write(buffer, 0, new Uint8Array(b.bytes));
      this.#uniforms.push(buffer);
      return { buffer };
    }
    return b;
  }

  /** Encodes every dispatch, in order, into one compute pass of `encoder`. */
  encode(encoder: GPUCommandEncoder): void {
    const pass = encoder.beginComputePass({ label: this.label });
    for (const d of this.dispatches) {
      pass.setPipeline(d.pipeline);
      pass.setBindGroup(0, d.bindGroup);
      pass.dispatchWorkgroups(d.workgroups[0], d.workgroups[1], d.workgroups[2]);
    }
    pass.end();
  }

  /** Encodes the program into a fresh encoder and submits it (no sync). */
  run(): void {
    const encoder = this.gpu.device.createCommandEncoder({ label: this.label });
    this.encode(encoder);
    this.gpu.submit([encoder.finish()]);
  }

  /** Runs the program inside error scopes, raising validation errors with the program's name. */
  async runChecked(): Promise<void> {
    await this.gpu.scoped(`program ${this.label}`, () => this.run());
  }

  /**
   * A scratch tensor that lives as long as the program (split-K partials, reduction partials): the program
   * reads it on every run and frees it in {@link Program.destroy}.
   */
  scratch(shape: readonly number[], dtype: DType, label: string): Tensor {
    const t = Tensor.empty(this.gpu, shape, dtype, `${this.label}: ${label}`);
    this.#owned.push(t);
    return t;
  }

  /**
   * A scratch tensor shared by every caller in this program that asks for the same `kind`, shape and dtype:
   * for values that only the dispatches recorded right after it read (a split-K product's partials, a column
   * block of a split linear copied out and back). A program's dispatches run in order, each seeing the writes
   * of those before it, so the next caller's writes cannot reach a value still in use.
   */
  transient(kind: string, shape: readonly number[], dtype: DType): Tensor {
    const key = `${kind}|${shape.join("x")}|${dtype}`;
    let t = this.#transients.get(key);
    if (!t) {
      t = this.scratch(shape, dtype, kind);
      this.#transients.set(key, t);
    }
    return t;
  }

  /**
   * A 2-D rgba32f texture of `width` × `height` texels, writable as a storage texture and readable by
   * `textureLoad`, shared like {@link transient} by every caller asking for the same `kind` and size (the
   * CPU matmul's packed operands, read by the dispatch recorded right after the packing).
   */
  transientTexture(kind: string, width: number, height: number): GPUTexture {
    const key = `${kind}|${width}x${height}`;
    let t = this.#textures.get(key);
    if (!t) {
      t = this.#makeTexture(kind, width, height);
      this.#textures.set(key, t);
    }
    return t;
  }

  #makeTexture(kind: string, width: number, height: number): GPUTexture {
    const texture = this.gpu.device.createTexture({
      label: `${this.label}: ${kind}`,
      size: [width, height],
      format: "rgba32float",
      usage: GPUTextureUsage.STORAGE_BINDING | GPUTextureUsage.TEXTURE_BINDING,
    });
    this.#allTextures.push(texture);
    return texture;
  }

  /**
   * The rgba32f texture of `width` × `height` texels kept for tensor `t` alone (made on first use), like
   * {@link transientTexture} otherwise: for tensors declared {@link readOnly}, packed once and read by every
   * later use.
   */
  ownTexture(t: Tensor, width: number, height: number): GPUTexture {
    const r = rangeOf(t.binding());
    const key = `${r.offset}+${r.size}|${t.dtype}`;
    const owned = this.#ownTextures.get(r.buffer) ?? new Map<string, GPUTexture>();
    this.#ownTextures.set(r.buffer, owned);
    let texture = owned.get(key);
    if (!texture) {
      texture = this.#makeTexture(`packed ${t.label}`, width, height);
      owned.set(key, texture);
    }
    return texture;
  }

  /** A view of the whole of `texture` to bind; a dispatch binding it counts `bytes` in its profile. */
  textureView(texture: GPUTexture, bytes: number): GPUTextureView {
    const view = texture.createView();
    this.#viewBytes.set(view, bytes);
    return view;
  }

  /** Bytes of the textures this program made ({@link transientTexture}, {@link ownTexture}). */
  textureBytes(): number {
    let n = 0;
    for (const t of this.#allTextures) n += 16 * t.width * t.height;
    return n;
  }

  /** Frees the uniform buffers, scratch tensors and textures this program made. */
  destroy(): void {
    for (const b of this.#uniforms) b.destroy();
    for (const t of this.#owned) t.destroy();
    for (const t of this.#allTextures) t.destroy();
    this.#textures.clear();
    this.#ownTextures.clear();
    this.#allTextures = [];
    this.textures.forget();
    this.#uniforms = [];
    this.#owned = [];
    this.#transients.clear();
    this.dispatches.length = 0;
  }
}

/** Builds a one-off program with `build`, runs it checked, and frees it. */
export async function runOnce(gpu: Gpu, label: string, build: (p: Program) => Promise<void>): Promise<void> {
  const program = new Program(gpu, label);
  try {
    await build(program);
    await program.runChecked();
  } finally {
    program.destroy();
  }
}
