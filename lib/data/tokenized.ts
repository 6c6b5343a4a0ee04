/**
 * A tokenized dataset held as three packed arrays (no per-sample JS arrays): all token ids, all loss-mask
 * bits, and per-sample offsets into them. This is what the cache stores, the vocab counter reads and the
 * loader batches.
 */

import { DataError } from "./errors.ts";

/** One sample as views into the packed arrays. */
export interface SampleView {
  /** The sample's id from the data file. */
  id: string;
  /** The sample's token ids (a view: no copy). */
  inputIds: Int32Array;
  /** 1 where the token is supervised, one per token (a view: no copy). */
  lossMask: Uint8Array;
}

/** Samples packed end to end: sample i spans `[offsets[i], offsets[i+1])` of `inputIds` and `lossMask`. */
export class TokenizedDataset {
  /** Sample ids (from the data file). */
  readonly ids: string[];
  /** n + 1 token offsets, offsets[0] = 0. */
  readonly offsets: Uint32Array;
  /** Token ids of all samples. */
  readonly inputIds: Int32Array;
  /** 1 where supervised. */
  readonly lossMask: Uint8Array;

  /** Wraps packed arrays; checks that they agree. */
  constructor(ids: string[], offsets: Uint32Array, inputIds: Int32Array, lossMask: Uint8Array) {
    if (offsets.length !== ids.length + 1 || offsets[0] !== 0) {
      throw new DataError(`tokenized dataset: ${offsets.length} offsets for ${ids.length} samples`);
    }
    const total = offsets[offsets.length - 1];
    if (inputIds.length !== total || lossMask.length !== total) {
      throw new DataError(
        `tokenized dataset: offsets end at ${total} but there are ${inputIds.length} ids and ${lossMask.length} mask bits`,
      );
    }
    for (let i = 0; i < ids.length; i++) {
      if (offsets[i + 1] < offsets[i]) {
        throw new DataError(`tokenized dataset: offsets decrease at sample ${i}`);
      }
    }
    this.ids = ids;
    this.offsets = offsets;
    this.inputIds = inputIds;
    this.lossMask = lossMask;
  }

  /** Number of samples. */
  get length(): number {
    return this.ids.length;
  }

  /** Number of tokens over all samples. */
  get numTokens(): number {
    return this.inputIds.length;
  }

  /** Tokens of sample `i`. */
  sampleLength(i: number): number {
    return this.offsets[i + 1] - this.offsets[i];
  }

  /** Sample `i` as views (no copy). */
  sample(i: number): SampleView {
    if (!(i >= 0 && i < this.length)) throw new RangeError(`sample ${i} out of range [0, ${this.length})`);
    const a = this.offsets[i];
    const b = this.offsets[i + 1];
    return {
      id: this.ids[i],
      inputIds: this.inputIds.subarray(a, b),
      lossMask: this.lossMask.subarray(a, b),
    };
  }

  /** Number of supervised tokens over all samples. */
  supervisedTokens(): number {
    let n = 0;
    for (let i = 0; i < this.lossMask.length; i++) n += this.lossMask[i];
    return n;
  }
}

/** Appends samples into growing packed arrays; `finish()` returns the dataset. */
export class TokenizedDatasetBuilder {
  #ids: string[] = [];
  #offsets: number[] = [0];
  #inputIds = new Int32Array(1 << 16);
  #lossMask = new Uint8Array(1 << 16);
  #n = 0;

  /** Appends one sample (its arrays are copied). */
  add(id: string, inputIds: ArrayLike<number>, lossMask: ArrayLike<number>): void {
    if (inputIds.length !== lossMask.length) {
      throw new DataError(`sample ${id}: ${inputIds.length} ids but ${lossMask.length} mask bits`);
    }
    const need = this.#n + inputIds.length;
    if (need > 0xffffffff) {
      throw new DataError("tokenized dataset larger than 2^32 tokens; split the data file");
    }
    if (need > this.#inputIds.length) {
      let cap = this.#inputIds.length;
      while (cap < need) cap *= 2;
      const ids = new Int32Array(cap);
      ids.set(this.#inputIds.subarray(0, this.#n));
      const mask = new Uint8Array(cap);
      mask.set(this.#lossMask.subarray(0, this.#n));
      this.#inputIds = ids;
      this.#lossMask = mask;
    }
    this.#inputIds.set(inputIds, this.#n);
    this.#lossMask.set(lossMask, this.#n);
    this.#n = need;
    this.#ids.push(id);
    this.#offsets.push(need);
  }

  /** Samples so far. */
  get length(): number {
    return this.#ids.length;
  }

  /** The packed dataset (arrays trimmed to size). */
  finish(): TokenizedDataset {
    return new TokenizedDataset(
      this.#ids,
      Uint32Array.from(this.#offsets),
      this.#inputIds.slice(0, this.#n),
      this.#lossMask.slice(0, this.#n),
    );
  }
}
