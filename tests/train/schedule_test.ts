import assert from "node:assert/strict";

function near(actual: number, expected: number, tol: number): void {
  assert.ok(Math.abs(actual - expected) <= tol, `${actual} is not within ${tol} of ${expected}`);
}
import { lrAt, warmupStepsFor } from "../../lib/train/schedule.ts";

Deno.test("warmupStepsFor truncates like Python's int()", () => {
  assert.equal(warmupStepsFor(1000, 0.015), 15);
  assert.equal(warmupStepsFor(100, 0.015), 1);
  assert.equal(warmupStepsFor(66, 0.015), 0);
  assert.equal(warmupStepsFor(10, 0), 0);
  assert.throws(() => warmupStepsFor(10, -0.1), RangeError);
});

Deno.test("lrAt: warmup starts at base/W and reaches base at W", () => {
  const s = { base: 1e-3, warmupSteps: 15, totalSteps: 1000 };
  assert.equal(lrAt(1, s), 1e-3 / 15);
  near(lrAt(7, s), 7e-3 / 15, 1e-18);
  assert.equal(lrAt(15, s), 1e-3);
});

Deno.test("lrAt: cosine starts at exactly base at W+1 and ends just above 0", () => {
  const s = { base: 1e-3, warmupSteps: 15, totalSteps: 1000 };
  assert.equal(lrAt(16, s), 1e-3);
  const tc = 1000 - 15;
  near(lrAt(17, s), 1e-3 * 0.5 * (1 + Math.cos(Math.PI / tc)), 1e-18);
  // Midpoint of the cosine: n − 1 − W = Tc/2.
  const s2 = { base: 2, warmupSteps: 2, totalSteps: 12 };
  near(lrAt(8, s2), 1, 1e-15);
  const last = lrAt(1000, s);
  near(last, 1e-3 * 0.5 * (1 + Math.cos(Math.PI * (tc - 1) / tc)), 1e-18);
  assert.ok(last > 0 && last < 1e-8);
  // Monotone decreasing after warmup.
  for (let n = 17; n <= 1000; n++) assert.ok(lrAt(n, s) < lrAt(n - 1, s));
});

Deno.test("lrAt: without warmup the cosine starts at base on update 1", () => {
  const s = { base: 0.5, warmupSteps: 0, totalSteps: 4 };
  assert.equal(lrAt(1, s), 0.5);
  near(lrAt(2, s), 0.25 * (1 + Math.cos(Math.PI / 4)), 1e-15);
  near(lrAt(3, s), 0.25, 1e-15);
  assert.equal(lrAt(1, { base: 1, warmupSteps: 0, totalSteps: 1 }), 1);
});

Deno.test("lrAt: steps outside 1..total and bad schedules are refused", () => {
  const s = { base: 1, warmupSteps: 1, totalSteps: 10 };
  assert.throws(() => lrAt(0, s), RangeError);
  assert.throws(() => lrAt(11, s), RangeError);
  assert.throws(() => lrAt(1.5, s), RangeError);
  assert.throws(() => lrAt(1, { base: 1, warmupSteps: 10, totalSteps: 10 }), RangeError);
  assert.throws(() => lrAt(1, { base: 1, warmupSteps: 0, totalSteps: 0 }), RangeError);
});
