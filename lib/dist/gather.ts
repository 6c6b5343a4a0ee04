/**
 * Gathering one JSON value from every rank of a {@link World} with its sum alone: each rank writes its bytes
 * into its own slot of a zero buffer and one all-reduce (a sum with zeros elsewhere, so exact: byte values
 * in f32) gives every rank all of them; a first all-reduce of the lengths sizes the slots.
 */
import type { World } from "./world.ts";

/** Every rank's `value`, in rank order (one process: `[value]`). The values must be JSON-serialisable. */
export function gatherJson<T>(world: World, value: T): T[] {
  if (world.size === 1) return [value];
  const mine = new TextEncoder().encode(JSON.stringify(value));
  const lengths = new Float64Array(world.size);
  lengths[world.rank] = mine.length;
  world.sum(lengths);
  const offsets = [0];
  for (const n of lengths) offsets.push(offsets.at(-1)! + n);
  const all = new Float32Array(offsets.at(-1)!);
  all.set(mine, offsets[world.rank]);
  world.sum(all);
  const decoder = new TextDecoder();
  return Array.from(lengths, (_, r) => {
    const bytes = Uint8Array.from(all.subarray(offsets[r], offsets[r + 1]));
    return JSON.parse(decoder.decode(bytes)) as T;
  });
}
