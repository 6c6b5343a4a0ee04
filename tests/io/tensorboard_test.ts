/**
 * lib/io/tensorboard.ts against tests/golden/tensorboard.tfevents, which TensorBoard's own EventFileWriter
 * wrote and its EventAccumulator read back (tests/golden/make_tensorboard.py): the same events give the same
 * bytes. Also the CRC-32C check value and the writer's file on disk.
 */
import assert from "node:assert/strict";
import { join } from "node:path";
import {
  crc32c,
  fileVersionEvent,
  scalarEvent,
  TensorBoardWriter,
  tfRecord,
} from "../../lib/io/tensorboard.ts";

const GOLDEN = new URL("../golden/tensorboard.tfevents", import.meta.url);

/** The events of make_tensorboard.py, in its order. */
const EVENTS: [number, number, [string, number][]][] = [
  [1, 1700000001.25, [["train/loss", 2.5], ["train/ploss_0", 1.25], ["train/acc_0", 0.5], [
    "train/lr",
    0.001,
  ]]],
  [2, 1700000002.5, [["train/loss", 1.875], ["train/tokens_per_s", 1234.5], ["eval/tau", 1.75]]],
  [10, 1700000010.0, [["eval/acc_1", 0.1], ["train/loss", -0.0]]],
];

const concat = (parts: Uint8Array[]) => {
  const out = new Uint8Array(parts.reduce((n, p) => n + p.length, 0));
  let o = 0;
  for (const p of parts) out.set(p, o), o += p.length;
  return out;
};

Deno.test("crc32c: the standard check value (CRC-32C of '123456789' = 0xe3069283)", () => {
  assert.equal(crc32c(new TextEncoder().encode("123456789")), 0xe3069283);
});

Deno.test("tensorboard: the same bytes as TensorBoard's EventFileWriter", async () => {
  const golden = await Deno.readFile(GOLDEN);
  const ours = concat([
    tfRecord(fileVersionEvent(1700000000.0, "tensorboard.summary.writer.event_file_writer")),
    ...EVENTS.map(([step, wall, scalars]) => tfRecord(scalarEvent(wall, step, scalars))),
  ]);
  assert.equal(ours.length, golden.length);
  assert.deepEqual(ours, golden);
});

Deno.test("tensorboard: TensorBoardWriter writes the version event then one record per step", async () => {
  const dir = await Deno.makeTempDir();
  try {
    let t = 1700000000.0;
    const w = await TensorBoardWriter.create(join(dir, "tb"), {
      now: () => t,
      writer: "tensorboard.summary.writer.event_file_writer",
    });
    for (const [step, wall, scalars] of EVENTS) {
      t = wall;
      await w.scalars(step, { ...Object.fromEntries(scalars), skipped: NaN, absent: null });
    }
    w.close();
    assert.match(w.path, /events\.out\.tfevents\.1700000000\..+\.eaglet$/);
    assert.deepEqual(await Deno.readFile(w.path), await Deno.readFile(GOLDEN));
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});
