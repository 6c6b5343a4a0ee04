/** Reads golden tensors written by tests/golden/*.py (committed safetensors files under tests/golden/). */
import { parseSafetensors, toFloat32, toNumbers } from "../lib/io/safetensors.ts";

/** A golden file's tensors, by name: floats as Float32Array, integers as number[]. */
export class Golden {
  constructor(readonly file: string, private tensors: ReturnType<typeof parseSafetensors>["tensors"]) {}

  /** Loads `tests/golden/<name>.safetensors`. */
  static load(name: string): Golden {
    const url = new URL(`./golden/${name}.safetensors`, import.meta.url);
    return new Golden(url.pathname, parseSafetensors(Deno.readFileSync(url), url.pathname).tensors);
  }

  /** The float tensor `name`. */
  f32(name: string): Float32Array<ArrayBuffer> {
    return toFloat32(this.#get(name), `${this.file}:${name}`);
  }

  /** The integer tensor `name`. */
  ints(name: string): number[] {
    return toNumbers(this.#get(name), `${this.file}:${name}`);
  }

  /** The shape of tensor `name`. */
  shape(name: string): number[] {
    return this.#get(name).shape;
  }

  #get(name: string) {
    const t = this.tensors.get(name);
    if (!t) throw new Error(`${this.file}: no tensor ${name}`);
    return t;
  }
}
