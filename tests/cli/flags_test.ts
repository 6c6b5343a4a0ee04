/**
 * lib/flags.ts: declarations → typed settings, the argv parser, the settings builder, --help and the README's
 * tables (which must match README.md: `deno task readme-flags` rewrites them).
 */
import assert from "node:assert/strict";
import {
  FlagError,
  flagHelp,
  flagMarkdown,
  type FlagTable,
  parseCommand,
  type Settings,
  settingsOf,
} from "../../lib/flags.ts";
import { readmeTables, renderedTable } from "../../tasks/readme_flags.ts";
import { TASKS } from "../../tasks/eaglet.ts";

const FLAGS = {
  "model-path": { kind: "string", required: true, arg: "dir", help: "the model" },
  "max-length": { kind: "int", default: 2048, min: 1, help: "tokens kept" },
  "num-samples": { kind: "int", help: "samples (default: all)" },
  "learning-rate": { kind: "float", default: 1e-4, above: 0, help: "peak learning rate" },
  "warmup-ratio": { kind: "float", default: 0.015, min: 0, below: 1, help: "warmup share" },
  "aux-layers": { kind: "ints", min: 0, length: 3, help: "three layer ids" },
  "dtype": { kind: "choice", choices: ["bf16", "f16", "f32"], default: "bf16", help: "weights dtype" },
  "input": { kind: "strings", help: "input files" },
  "overwrite": { kind: "bool", help: "replace the output" },
  "tp-size": {
    kind: "int",
    default: 1,
    compat: true,
    help: "tensor parallelism",
    check: (n) => n === 1 ? null : "1",
  },
} as const satisfies FlagTable;

type S = Settings<typeof FLAGS>;

/** One-line FlagError whose message matches `re`. */
function throwsFlag(f: () => unknown, re: RegExp) {
  assert.throws(f, (e: unknown) => {
    assert.ok(e instanceof FlagError, String(e));
    assert.ok(!e.message.includes("\n"), e.message);
    assert.match(e.message, re);
    return true;
  });
}

Deno.test("flags: the settings type is computed from the table (camelCase keys, value types)", () => {
  const r = parseCommand(FLAGS, ["--model-path", "m"]);
  assert.ok(!r.help);
  const s: S = r.settings;
  // Compile-time checks: each line would fail `deno check` if the computed type were wrong.
  const path: string = s.modelPath;
  const length: number = s.maxLength;
  const samples: number | null = s.numSamples;
  const layers: number[] | null = s.auxLayers;
  const dtype: "bf16" | "f16" | "f32" = s.dtype;
  const input: string[] = s.input;
  const overwrite: boolean = s.overwrite;
  // @ts-expect-error an optional flag without a default may be null
  const notNull: number = s.numSamples;
  // @ts-expect-error a choice is one of its values
  const other: "fp8" = s.dtype;
  assert.deepEqual([path, length, samples, layers, dtype, input, overwrite], [
    "m",
    2048,
    null,
    null,
    "bf16",
    [],
    false,
  ]);
  assert.deepEqual([notNull, other], [null, "bf16"]);
});

Deno.test("flags: argv values are converted, defaults filled, lists and repeats read", () => {
  const r = parseCommand(FLAGS, [
    ...["--model-path", "m", "--max-length", "128", "--num-samples", "5", "--learning-rate", "3e-3"],
    ...["--aux-layers", "1, 15,28", "--dtype", "f32", "--input", "a", "--input", "b", "--overwrite"],
  ]);
  assert.ok(!r.help);
  assert.deepEqual(r.settings, {
    modelPath: "m",
    maxLength: 128,
    numSamples: 5,
    learningRate: 3e-3,
    warmupRatio: 0.015,
    auxLayers: [1, 15, 28],
    dtype: "f32",
    input: ["a", "b"],
    overwrite: true,
    tpSize: 1,
  });
  const help = parseCommand(FLAGS, ["--help"]);
  assert.ok(help.help, "--help needs no required flag");
  assert.ok(parseCommand(FLAGS, ["--model-path", "m", "--debug"]).debug);
});

Deno.test("flags: bad values, unknown flags and missing required flags are one-line errors naming the flag", () => {
  const base = ["--model-path", "m"];
  throwsFlag(() => parseCommand(FLAGS, []), /^missing --model-path \(see --help\)$/);
  throwsFlag(
    () => parseCommand(FLAGS, [...base, "--max-length", "1.5"]),
    /^--max-length must be a non-negative integer, got 1.5$/,
  );
  throwsFlag(
    () => parseCommand(FLAGS, [...base, "--max-length", "0"]),
    /^--max-length must be at least 1, got 0$/,
  );
  throwsFlag(
    () => parseCommand(FLAGS, [...base, "--max-length", ""]),
    /^--max-length must be a non-negative integer/,
  );
  throwsFlag(
    () => parseCommand(FLAGS, [...base, "--num-samples=-1.5"]),
    /^--num-samples must be an integer/,
  );
  throwsFlag(
    () => parseCommand(FLAGS, [...base, "--learning-rate", "fast"]),
    /--learning-rate must be a number/,
  );
  throwsFlag(
    () => parseCommand(FLAGS, [...base, "--learning-rate", "0"]),
    /--learning-rate must be positive/,
  );
  throwsFlag(
    () => parseCommand(FLAGS, [...base, "--warmup-ratio", "1"]),
    /--warmup-ratio must be within \[0, 1\), got 1/,
  );
  throwsFlag(() => parseCommand(FLAGS, [...base, "--aux-layers", "1,x,3"]), /--aux-layers must be a list of/);
  throwsFlag(
    () => parseCommand(FLAGS, [...base, "--aux-layers", "1,2"]),
    /--aux-layers must be a list of 3 values, got "1,2"/,
  );
  throwsFlag(() => parseCommand(FLAGS, [...base, "--dtype", "fp8"]), /--dtype must be one of bf16, f16, f32/);
  throwsFlag(() => parseCommand(FLAGS, [...base, "--tp-size", "2"]), /--tp-size must be 1, got 2/);
  throwsFlag(() => parseCommand(FLAGS, [...base, "--no-such-flag"]), /no-such-flag/);
  throwsFlag(() => parseCommand(FLAGS, [...base, "--max-length"]), /max-length/);
  throwsFlag(() => parseCommand(FLAGS, [...base, "stray"]), /stray/);
  assert.deepEqual(parseCommand(FLAGS, [...base, "stray"], { positionals: true }), {
    help: false,
    debug: false,
    settings: settingsOf(FLAGS, { modelPath: "m" }),
    positionals: ["stray"],
  });
});

Deno.test("flags: settingsOf takes a typed object, fills defaults and checks values by the same rules", () => {
  const s = settingsOf(FLAGS, { modelPath: "m", maxLength: 64, auxLayers: [0, 1, 1] });
  assert.equal(s.maxLength, 64);
  assert.equal(s.learningRate, 1e-4);
  assert.deepEqual(s.auxLayers, [0, 1, 1]);
  assert.equal(s.numSamples, null);
  throwsFlag(
    () => settingsOf(FLAGS, { modelPath: "m", maxLength: 0 }),
    /^maxLength must be at least 1, got 0$/,
  );
  throwsFlag(
    () => settingsOf(FLAGS, { modelPath: "m", maxLength: 2.5 }),
    /^maxLength must be a non-negative integer, got 2.5$/,
  );
  // @ts-expect-error modelPath is required
  throwsFlag(() => settingsOf(FLAGS, {}), /^missing modelPath/);
  // @ts-expect-error no such setting
  throwsFlag(() => settingsOf(FLAGS, { modelPath: "m", maxLen: 3 }), /unknown setting 'maxLen'/);
});

Deno.test("flags: --help lists every flag with its placeholder, default, choices and markers", () => {
  const text = flagHelp(FLAGS, "usage: x --model-path <dir>", "About x.");
  assert.ok(text.startsWith("usage: x --model-path <dir>\n\nAbout x.\n\n"));
  assert.ok(text.includes("  --model-path <dir>\n      the model (required)\n"));
  assert.ok(text.includes("  --max-length <value>\n      tokens kept (default: 2048)\n"));
  assert.ok(text.includes("  --num-samples <value>\n      samples (default: all)\n"));
  assert.ok(text.includes("  --aux-layers <a,b,c>\n"));
  assert.ok(text.includes("weights dtype {bf16, f16, f32} (default: bf16)"));
  assert.ok(text.includes("  --overwrite\n      replace the output\n"));
  assert.ok(text.includes("tensor parallelism (default: 1) [accepted for SpecForge compatibility]"));
  assert.ok(text.endsWith("  --debug\n      print stack traces on errors\n  --help\n      this text\n"));
  const long = flagHelp({ x: { kind: "string", help: "word ".repeat(60).trim() } }, "u");
  assert.ok(long.split("\n").every((l) => l.length <= 110));
});

Deno.test("flags: the Markdown table has one row per flag with its type and default", () => {
  const md = flagMarkdown(FLAGS).split("\n");
  assert.equal(md.length, 2 + Object.keys(FLAGS).length);
  assert.match(md[0], /^\| flag +\| type +\| default +\| description +\|$/);
  assert.match(md[2], /^\| `--model-path` +\| string +\| required +\| the model +\|$/);
  assert.match(md[3], /^\| `--max-length` +\| int +\| `2048` +\| tokens kept +\|$/);
  assert.match(md[8], /\| bf16 \\\| f16 \\\| f32 +\| `bf16` +\|/);
  assert.match(md[11], /tensor parallelism \(accepted for SpecForge compatibility\)/);
});

/** A Markdown table's rows as trimmed cells (column padding and dash runs do not count). */
function cells(lines: string[]): string[][] {
  return lines.filter((l) => l.startsWith("|")).map((l) =>
    l.slice(1, -1).split(/(?<!\\)\|/).map((c) => c.trim()).map((c) => /^-+$/.test(c) ? "---" : c)
  );
}

Deno.test("flags: README.md's flag tables are the ones the declarations render (deno task readme-flags)", async () => {
  const readme = await Deno.readTextFile(new URL("../../README.md", import.meta.url));
  const tables = readmeTables(readme);
  const documented = new Set(tables.map((t) => t.task));
  for (const task of Object.keys(TASKS)) {
    if (task === "train-offline") continue; // the same flags as train-online, one table
    assert.ok(documented.has(task), `README.md has no flag table for ${task} (add <!-- flags: ${task} -->)`);
  }
  for (const t of tables) {
    assert.deepEqual(
      cells(t.lines),
      cells(renderedTable(t.task).split("\n")),
      `README.md's flag table of ${t.task} differs from its declarations: run deno task readme-flags`,
    );
  }
});

Deno.test("flags: --no-<switch> turns a switch off, a flag named no-<x> stays itself", () => {
  const table = {
    "shuffle": { kind: "bool", default: true, help: "shuffle" },
    "no-speed": { kind: "bool", help: "skip the speed runs" },
    "speed": { kind: "bool", help: "a switch whose negation is also a flag" },
  } as const satisfies FlagTable;
  const parse = (...argv: string[]) => {
    const r = parseCommand(table, argv);
    assert.ok(!r.help);
    return r.settings;
  };
  assert.deepEqual(parse(), { shuffle: true, noSpeed: false, speed: false });
  assert.deepEqual(parse("--no-shuffle"), { shuffle: false, noSpeed: false, speed: false });
  assert.deepEqual(parse("--no-speed"), { shuffle: true, noSpeed: true, speed: false });
  throwsFlag(() => parse("--shuffle", "--no-shuffle"), /--shuffle and --no-shuffle are both given/);
  throwsFlag(() => parse("--no-such"), /no-such/);
});
