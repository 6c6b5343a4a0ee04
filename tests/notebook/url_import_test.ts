/**
 * mod.ts by URL, as a notebook or a script elsewhere imports it: no import map, no deno.json, an empty module
 * cache. The repository is served over 127.0.0.1 by a small file server; a script in a temporary directory
 * imports `http://127.0.0.1:PORT/mod.ts`, Deno fetches every module from the server and the npm packages
 * (lib/npm.ts's fully qualified `npm:` specifiers) from the npm registry into a fresh DENO_DIR, and the script
 * trains an EAGLE-3 draft on tinystories-656K for a few updates through the API's typed settings.
 */
import assert from "node:assert/strict";
import { join, resolve } from "node:path";
import ts from "typescript";
import { needsGpu } from "../gpu.ts";
import { serveDirectory } from "../../lib/cli/serve.ts";

const ROOT = new URL("../..", import.meta.url).pathname;
const TINYSTORIES = new URL("../../../shared/models/tinystories-656K", import.meta.url).pathname;
/** The one module that names npm packages, each with an exact version. */
const NPM_MODULE = "lib/npm.ts";
const EXACT_NPM = /^npm:((?:@[\w.-]+\/)?[\w.-]+)@\d+\.\d+\.\d+$/;

async function exists(path: string): Promise<boolean> {
  try {
    await Deno.stat(path);
    return true;
  } catch {
    return false;
  }
}

function libraryFiles(): string[] {
  const out = ["mod.ts"];
  const walk = (rel: string) => {
    for (const e of Deno.readDirSync(join(ROOT, rel))) {
      const child = `${rel}/${e.name}`;
      if (e.isDirectory) walk(child);
      else if (e.isFile && e.name.endsWith(".ts")) out.push(child);
    }
  };
  walk("lib");
  walk("kernels");
  return out.sort();
}

Deno.test("url import: the library imports only relative modules, node: built-ins and lib/npm.ts's packages", () => {
  const bad: string[] = [];
  const packages = new Map<string, string>();
  for (const file of libraryFiles()) {
    const info = ts.preProcessFile(Deno.readTextFileSync(join(ROOT, file)), true, true);
    for (const { fileName: spec } of info.importedFiles) {
      if (spec.startsWith("./") || spec.startsWith("../") || spec.startsWith("node:")) continue;
      const m = EXACT_NPM.exec(spec);
      if (file === NPM_MODULE && m) {
        const seen = packages.get(m[1]);
        if (seen !== undefined && seen !== spec) bad.push(`${file}: ${m[1]} named with two versions`);
        packages.set(m[1], spec);
        continue;
      }
      bad.push(`${file}: "${spec}"`);
    }
  }
  assert.deepEqual(
    bad,
    [],
    `a module reachable by URL must not rely on deno.json's import map; name npm packages (exact version) ` +
      `only in ${NPM_MODULE}:\n${bad.join("\n")}`,
  );
  assert.ok(packages.size > 0, `${NPM_MODULE} names no package`);
});

const haveTinystories = await exists(join(TINYSTORIES, "model.safetensors"));
if (!haveTinystories) console.warn(`skipping the URL-import training run: ${TINYSTORIES} is absent`);

/** The script a user would write: a static import of mod.ts by URL, typed settings, a few updates. */
function userScript(modUrl: string, target: string): string {
  return `import * as eaglet from "${modUrl}";

const gpu = await eaglet.Gpu.create();
const model = await eaglet.TargetModel.load(gpu, ${JSON.stringify(target)});
const samples = await eaglet.selfDistilledSamples(model, { count: 8, openingTokens: 8, continuationTokens: 16, batch: 8 });
model.destroy();
await eaglet.writeJsonl("train.jsonl", samples);
const settings = eaglet.trainSettings({
  targetModelPath: ${JSON.stringify(target)},
  trainDataPath: "train.jsonl",
  outputDir: "run",
  cacheDir: "cache",
  maxLength: 24,
  batchSize: 2,
  maxNumSteps: 3,
  learningRate: 5e-3,
  tttLength: 2,
  draftVocabSize: 256,
  logInterval: 1,
});
const run = await eaglet.trainOnline(gpu, { settings, hub: eaglet.hubOptionsFromEnv({}) });
gpu.destroy();
console.log(JSON.stringify({ updates: run.updates, checkpoint: run.checkpoint, loss: run.lastTrain?.loss ?? null }));
`;
}

Deno.test({
  name: "url import: a script outside the repository imports mod.ts over HTTP with a fresh cache and trains",
  ...needsGpu,
  ignore: needsGpu.ignore || !haveTinystories,
}, async () => {
  const server = serveDirectory(ROOT);
  const dir = await Deno.makeTempDir({ prefix: "eaglet-url-import-" });
  try {
    const denoDir = join(dir, "deno-dir");
    const work = join(dir, "user");
    await Deno.mkdir(work);
    await Deno.writeTextFile(join(work, "train.ts"), userScript(`${server.url}mod.ts`, TINYSTORIES));
    const out = await new Deno.Command(Deno.execPath(), {
      args: ["run", "-A", "--no-config", "--no-lock", "train.ts"],
      cwd: work,
      env: { ...Deno.env.toObject(), DENO_DIR: denoDir, NO_COLOR: "1", NODEVICE_SELECT: "1" },
      stdout: "piped",
      stderr: "piped",
    }).output();
    const dec = new TextDecoder();
    const stdout = dec.decode(out.stdout), stderr = dec.decode(out.stderr);
    assert.equal(out.code, 0, `the URL-importing script failed:\n${stderr.slice(-4000)}`);
    // Every module came from the server, the npm packages from the registry into the empty cache.
    for (const path of ["/mod.ts", "/lib/npm.ts", "/lib/train/trainer.ts", "/kernels/eagle3.ts"]) {
      assert.ok(server.served.includes(path), `${path} was not fetched from the server`);
    }
    assert.ok(await exists(join(denoDir, "npm")), "no npm package was fetched into the fresh DENO_DIR");
    const result = JSON.parse(stdout.trim().split("\n").at(-1)!);
    assert.equal(result.updates, 3);
    assert.ok(result.checkpoint && await exists(join(resolve(work, result.checkpoint), "model.safetensors")));
    assert.ok(Number.isFinite(result.loss) && result.loss > 0, `loss ${result.loss}`);
  } finally {
    await server.close();
    await Deno.remove(dir, { recursive: true });
  }
});
