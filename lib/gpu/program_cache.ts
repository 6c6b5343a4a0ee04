/**
 * Prebuilt programs by key (a prompt length, a tree size), the `capacity` most recently used kept: building
 * one is cheap beside running it, but each holds its scratch buffers for as long as it lives, so a cache keyed
 * by something as varied as a prompt's length must not keep them all. An evicted program is destroyed (its
 * scratch goes back to the buffer pool); work already submitted with it completes first (the queue is in order).
 */
import type { Program } from "./program.ts";

/** Programs by key, least recently used first out. */
export class ProgramCache<K, V extends { program: Program }> {
  readonly #entries = new Map<K, V>();

  /** A cache keeping at most `capacity` (≥ 1) programs. */
  constructor(readonly capacity: number) {
    if (!(Number.isInteger(capacity) && capacity >= 1)) {
      throw new RangeError(`ProgramCache: capacity ${capacity}`);
    }
  }

  /** Programs held now. */
  get size(): number {
    return this.#entries.size;
  }

  /** The program of `key`: the cached one (now the most recently used), or `build()`'s, evicting the oldest. */
  async get(key: K, build: () => Promise<V>): Promise<V> {
    const found = this.#entries.get(key);
    if (found) {
      this.#entries.delete(key);
      this.#entries.set(key, found);
      return found;
    }
    const built = await build();
    this.#entries.set(key, built);
    for (const [oldKey, old] of this.#entries) {
      if (this.#entries.size <= this.capacity) break;
      this.#entries.delete(oldKey);
      old.program.destroy();
    }
    return built;
  }

  /** Destroys every program held. */
  destroy(): void {
    for (const v of this.#entries.values()) v.program.destroy();
    this.#entries.clear();
  }
}
