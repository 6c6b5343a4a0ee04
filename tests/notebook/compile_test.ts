/**
 * `deno task compile`: an executable where Deno's runtime can be downloaded, else one line saying why
 * (not deno compile's error chain and backtrace).
 */
import assert from "node:assert/strict";
import { join } from "node:path";
import { compileFailure } from "../../tasks/compile.ts";

const ROOT = new URL("../..", import.meta.url).pathname;

// deno compile's stderr on a machine without access to dl.deno.land (Deno 2.9.6, RUST_BACKTRACE=1).
const NO_NETWORK = `Check tasks/eaglet.ts
Compile tasks/eaglet.ts to dist/eaglet
Download https://dl.deno.land/release/v2.9.6/denort-x86_64-unknown-linux-gnu.zip
error: Writing deno compile executable to temporary file 'dist/eaglet.tmp-0094dbc68077736d'

Caused by:
    0: Setting up base binary.
    1: error sending request for url (https://dl.deno.land/release/v2.9.6/denort-x86_64-unknown-linux-gnu.zip): client error (Connect): dns error: failed to lookup address information: Name or service not known
    2: client error (Connect)
    3: dns error
    4: failed to lookup address information: Name or service not known

Stack backtrace:
   0: <unknown>
   1: <unknown>
`;

Deno.test("compile: a runtime download failure is one line naming the URL and the cause", () => {
  const line = compileFailure(NO_NETWORK, 1);
  assert.ok(!line.includes("\n"));
  assert.match(
    line,
    /^could not download Deno's runtime for the executable \(https:\/\/dl\.deno\.land\/release\/v2\.9\.6\/denort-x86_64-unknown-linux-gnu\.zip\): failed to lookup address information: Name or service not known\. /,
  );
  assert.match(line, /deno task bundle/);
  assert.equal(
    compileFailure('error: Module not found "file:///x.ts".\n', 1),
    'deno compile exited 1: Module not found "file:///x.ts".',
  );
});

Deno.test("compile: deno task compile writes an executable, or fails with one line", async () => {
  const dir = await Deno.makeTempDir({ prefix: "eaglet-compile-" });
  try {
    const exe = join(dir, "eaglet");
    const out = await new Deno.Command(Deno.execPath(), {
      args: ["run", "-A", "tasks/compile.ts", "--output", exe],
      cwd: ROOT,
      env: { NO_COLOR: "1" },
      stdout: "piped",
      stderr: "piped",
    }).output();
    const stderr = new TextDecoder().decode(out.stderr).trim();
    if (out.success) {
      const help = await new Deno.Command(exe, { args: ["--help"], stdout: "piped" }).output();
      assert.equal(help.code, 0);
      assert.match(new TextDecoder().decode(help.stdout), /^usage: eaglet <task>/);
    } else {
      assert.equal(out.code, 1);
      assert.equal(stderr.split("\n").length, 1, `more than one line:\n${stderr}`);
      assert.match(stderr, /^compile: /);
    }
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});
