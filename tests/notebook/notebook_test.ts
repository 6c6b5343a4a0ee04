/**
 * examples/eaglet.ipynb, executed headless with Deno's Jupyter kernel: the kernelspec `deno jupyter --install`
 * writes (into a temporary HOME), tests/notebook/execute_notebook.py as the executor (jupyter_client and
 * nbformat: Debian's python3-jupyter-client and python3-nbformat, or pip's), mod.ts served over 127.0.0.1
 * and imported by URL with a fresh module cache, tinystories-656K as the target.
 * Every cell must run without an error and show what it is for: the loss-mask view (HTML), the training curve
 * (SVG) and the acceptance length. The committed notebook itself carries no outputs.
 */
import assert from "node:assert/strict";
import { join } from "node:path";
import { needsGpu } from "../gpu.ts";
import { serveDirectory } from "../../lib/cli/serve.ts";

const ROOT = new URL("../..", import.meta.url).pathname;
const NOTEBOOK = join(ROOT, "examples/eaglet.ipynb");
const TINYSTORIES = new URL("../../../shared/models/tinystories-656K", import.meta.url).pathname;

interface Output {
  output_type: string;
  name?: string;
  text?: string | string[];
  data?: Record<string, string | string[]>;
  ename?: string;
  evalue?: string;
}
interface Cell {
  cell_type: string;
  source: string | string[];
  outputs?: Output[];
  execution_count?: number | null;
}

const join1 = (s: string | string[] | undefined) => (Array.isArray(s) ? s.join("") : s ?? "");

async function exists(path: string): Promise<boolean> {
  try {
    await Deno.stat(path);
    return true;
  } catch {
    return false;
  }
}

/** A Python with jupyter_client and nbformat ($EAGLET_JUPYTER_PYTHON, python3, /usr/bin/python3), or null. */
async function jupyterPython(): Promise<string | null> {
  const candidates = [Deno.env.get("EAGLET_JUPYTER_PYTHON"), "python3", "/usr/bin/python3"];
  for (const py of candidates) {
    if (!py) continue;
    try {
      const r = await new Deno.Command(py, {
        args: ["-c", "import jupyter_client, nbformat"],
        stderr: "null",
      })
        .output();
      if (r.success) return py;
    } catch {
      // not installed
    }
  }
  return null;
}

const python = await jupyterPython();
const haveTinystories = await exists(join(TINYSTORIES, "model.safetensors"));
if (python === null) {
  console.warn(
    "skipping the notebook run: no Python with jupyter_client and nbformat (apt-get install " +
      "python3-jupyter-client python3-nbformat, or pip install jupyter_client nbformat; EAGLET_JUPYTER_PYTHON " +
      "names another Python)",
  );
} else if (!haveTinystories) console.warn(`skipping the notebook run: ${TINYSTORIES} is absent`);

Deno.test("notebook: examples/eaglet.ipynb is committed without outputs", async () => {
  const nb = JSON.parse(await Deno.readTextFile(NOTEBOOK));
  assert.equal(nb.metadata.kernelspec.name, "deno");
  const code = (nb.cells as Cell[]).filter((c) => c.cell_type === "code");
  assert.ok(code.length >= 5);
  for (const c of code) {
    assert.deepEqual(c.outputs, [], `a cell has outputs: ${join1(c.source).split("\n")[0]}`);
    assert.equal(c.execution_count, null);
  }
});

const EXECUTE = join(ROOT, "tests/notebook/execute_notebook.py");

async function run(cmd: string, args: string[], env: Record<string, string>, cwd?: string) {
  const out = await new Deno.Command(cmd, { args, env, cwd, stdout: "piped", stderr: "piped" }).output();
  const dec = new TextDecoder();
  return { code: out.code, stdout: dec.decode(out.stdout), stderr: dec.decode(out.stderr) };
}

Deno.test({
  name: "notebook: examples/eaglet.ipynb runs headless in Deno's Jupyter kernel, importing mod.ts by URL",
  ...needsGpu,
  ignore: needsGpu.ignore || python === null || !haveTinystories,
}, async () => {
  const server = serveDirectory(ROOT);
  const dir = await Deno.makeTempDir({ prefix: "eaglet-notebook-" });
  try {
    const home = join(dir, "home"), work = join(dir, "work");
    await Deno.mkdir(home);
    await Deno.mkdir(work);
    // The kernelspec, as a user installs it; HOME points it at the temporary directory.
    const install = await run(Deno.execPath(), ["jupyter", "--install", "--force"], { HOME: home });
    assert.equal(install.code, 0, `deno jupyter --install failed:\n${install.stderr}`);
    const jupyterPath = join(home, ".local/share/jupyter");
    assert.ok(await exists(join(jupyterPath, "kernels/deno/kernel.json")), install.stdout + install.stderr);
    const executed = join(dir, "executed.ipynb");
    const r = await run(python!, [EXECUTE, NOTEBOOK, executed, work], {
      JUPYTER_PATH: jupyterPath,
      DENO_DIR: join(dir, "deno-dir"),
      EAGLET_MOD_URL: `${server.url}mod.ts`,
      EAGLET_TARGET: TINYSTORIES,
      EAGLET_OUT: join(dir, "out"),
      NO_COLOR: "1",
      NODEVICE_SELECT: "1",
    });
    assert.equal(r.code, 0, `the notebook failed:\n${r.stderr.slice(-6000)}`);
    assert.ok(server.served.includes("/mod.ts"), "mod.ts was not fetched from the server");

    const cells = (JSON.parse(await Deno.readTextFile(executed)).cells as Cell[]).filter((c) =>
      c.cell_type === "code"
    );
    const outputs = cells.flatMap((c) => c.outputs ?? []);
    const errors = outputs.filter((o) => o.output_type === "error");
    assert.deepEqual(errors.map((o) => `${o.ename}: ${o.evalue}`), []);
    const text = outputs.map((o) => join1(o.data?.["text/markdown"])).join("\n");
    const html = outputs.map((o) => join1(o.data?.["text/html"])).join("");
    const svg = outputs.map((o) => join1(o.data?.["image/svg+xml"])).join("");
    assert.match(html, /\d+ tokens, [1-9]\d* supervised/, "no loss-mask view");
    assert.match(html, /background:#9be59b/, "the loss-mask view marks no supervised token");
    assert.match(svg, /<svg[\s\S]*train loss[\s\S]*<\/svg>/, `no training curve: ${svg.slice(0, 200)}`);
    assert.match(text, /Eaglet from http:\/\/127\.0\.0\.1:\d+\/mod\.ts: \d+ exports/);
    assert.match(text, /LlamaForCausalLM\*\*: 2 layers, hidden 128/);
    assert.match(
      text,
      /trained \*\*12\*\* updates/,
      `no training result in:\n${JSON.stringify(outputs).slice(0, 3000)}`,
    );
    assert.match(text, /loss by update: 2: \d/);
    const stream = outputs.filter((o) => o.output_type === "stream").map((o) => join1(o.text)).join("");
    assert.match(stream, /^step 12\/12 .*loss \d/m, "no training progress line");
    assert.match(stream, /^exported \d+ tensors \(bf16\)/m);
    const tau = Number(text.match(/acceptance length \*\*(\d+\.\d+)\*\* over \d+ rounds/)?.[1]);
    assert.ok(tau >= 1, `acceptance length ${tau}`);
  } finally {
    await server.close();
    await Deno.remove(dir, { recursive: true });
  }
});
