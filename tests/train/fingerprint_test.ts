/** The resume contract: which differences between a checkpoint's run and the resumed one are refused. */
import assert from "node:assert/strict";
import { runChanges } from "../../lib/train/fingerprint.ts";

Deno.test("resume contract: a setting a checkpoint predates compares as the value the code had then", () => {
  const old = { ttt_length: 7, lk_loss_type: "none" }; // saved before ttt_loss_decay existed
  assert.deepEqual(runChanges(old, { ...old, ttt_loss_decay: 0.8 }, null, {}), []);
  assert.deepEqual(
    runChanges(old, { ...old, ttt_loss_decay: 1 }, null, {}).map((c) => [c.name, c.saved, c.now]),
    [
      ["ttt_loss_decay", "0.8", "1"],
    ],
  );
  assert.deepEqual(
    runChanges(old, { ...old, ttt_loss_decay: 0.8, lk_loss_type: "lambda" }, null, {}).map((c) => c.name),
    ["lk_loss_type"],
  );
});
