/**
 * Every examples/*.ts answers `--help` with a usage text naming its flags (or positionals) and their defaults,
 * exit code 0, and a bad flag with one line on stderr (no stack trace), exit code 1. Each script runs in a
 * subprocess, as a user runs it.
 */
import assert from "node:assert/strict";
import { fileURLToPath } from "node:url";
import { join } from "node:path";

const EXAMPLES = fileURLToPath(new URL("../../examples/", import.meta.url));

/**
 * What each example's help must say: its flags or positionals and their defaults. A new examples/*.ts fails
 * the test below until it is listed here.
 */
const EXPECTED: Record<string, { names: string[]; defaults: string[] }> = {
  "notebook.ts": {
    names: ["target", "output dir"],
    defaults: ["../shared/models/tinystories-656K", "out/notebook"],
  },
  "sizing.ts": {
    names: ["--lengths", "--draft-preset", "--head-chunk-rows", "--mlp-saved-dtype"],
    defaults: ["(default: 2048,8192)", "(default: eagle3.1-lk)", "(default: f32)"],
  },
  "tinystories_selfdistill.ts": {
    names: [
      "--target-model-path",
      "--output-dir",
      "--train-samples",
      "--eval-samples",
      "--continuation-tokens",
    ],
    defaults: [
      "(default: ../shared/models/tinystories-656K)",
      "(default: cache/tinystories-selfdistill)",
      "(default: 400)",
      "(default: 50)",
      "(default: 112)",
    ],
  },
};

/** The flags a script declares in a lib/flags.ts table: each `"name": { kind: ...` key, as `--name`. */
function declaredFlags(source: string): string[] {
  return [...source.matchAll(/^\s*"([a-z][a-z0-9-]*)":\s*\{\s*kind:/gm)].map((m) => `--${m[1]}`);
}

async function run(script: string, args: string[]) {
  const out = await new Deno.Command(Deno.execPath(), {
    args: ["run", "-A", join(EXAMPLES, script), ...args],
    stdout: "piped",
    stderr: "piped",
    env: { NODEVICE_SELECT: "1" },
  }).output();
  const text = new TextDecoder();
  return { code: out.code, stdout: text.decode(out.stdout), stderr: text.decode(out.stderr) };
}

const scripts = [...Deno.readDirSync(EXAMPLES)]
  .filter((e) => e.isFile && e.name.endsWith(".ts"))
  .map((e) => e.name)
  .sort();

Deno.test("examples: every examples/*.ts has its help text listed in this test", () => {
  assert.deepEqual(scripts, Object.keys(EXPECTED).sort());
});

for (const script of scripts) {
  Deno.test(`examples: ${script} --help prints its flags and defaults, exit code 0`, async () => {
    const expected = EXPECTED[script];
    assert.ok(expected, `${script} is listed in EXPECTED`);
    const flags = declaredFlags(await Deno.readTextFile(join(EXAMPLES, script)));
    assert.deepEqual(flags.filter((f) => !expected.names.includes(f)), [], "declared flags are expected");
    const { code, stdout, stderr } = await run(script, ["--help"]);
    assert.equal(code, 0, `${script} --help: ${stderr}`);
    assert.equal(stderr, "", "nothing on stderr");
    assert.match(stdout, /^usage: deno run -A examples\//);
    for (const s of [...flags, ...expected.names, ...expected.defaults]) {
      assert.ok(stdout.includes(s), `${script} --help names ${s}:\n${stdout}`);
    }
  });

  Deno.test(`examples: ${script} rejects an unknown flag in one line, exit code 1`, async () => {
    const { code, stdout, stderr } = await run(script, ["--no-such-flag"]);
    assert.equal(code, 1, stdout + stderr);
    assert.equal(stderr.trimEnd().split("\n").length, 1, `one line: ${stderr}`);
    assert.match(stderr, /--no-such-flag/);
    assert.doesNotMatch(stderr, /\n\s+at /, "no stack trace");
  });
}
