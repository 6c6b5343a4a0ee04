/**
 * `deno task compile`: `deno compile` of tasks/eaglet.ts into one executable with the Deno runtime inside
 * (default dist/eaglet). `deno compile` downloads that runtime (denort, for the target platform) from Deno's
 * release server, dl.deno.land, unless the DENORT_BIN environment variable names a local copy; on a machine
 * that cannot reach it, this task says so in one line instead of `deno compile`'s error chain and backtrace.
 */
import { runTask } from "../lib/cli/run.ts";
import { flagHelp, type FlagTable, parseCommand } from "../lib/flags.ts";

/** The flags of `compile`. */
export const COMPILE_FLAGS = {
  output: { kind: "string", arg: "file", default: "dist/eaglet", help: "the executable to write" },
  target: {
    kind: "string",
    arg: "triple",
    help: "build for another platform (deno compile --target, e.g. aarch64-apple-darwin)",
  },
} as const satisfies FlagTable;

/** Why `deno compile` failed, in one line, from its stderr (`code` its exit code). */
export function compileFailure(stderr: string, code: number): string {
  // deno compile prints "error: ...", "Caused by:" with numbered causes (the last one is the root), and with
  // RUST_BACKTRACE a "Stack backtrace:" whose numbered frames are not causes.
  const lines = stderr.split("Stack backtrace:")[0].split("\n").map((l) => l.trim());
  const causes = lines.filter((l) => /^\d+: /.test(l)).map((l) => l.replace(/^\d+: /, ""));
  const runtime = stderr.match(/https:\/\/dl\.deno\.land\/\S+?\.zip/)?.[0];
  if (runtime !== undefined) {
    return `could not download Deno's runtime for the executable (${runtime}): ${
      causes.at(-1) ?? "no connection"
    }. This machine cannot reach Deno's release server; build where it can (or set DENORT_BIN to a local ` +
      `denort binary), or use \`deno task bundle\` (dist/eaglet.js, no download).`;
  }
  const first = lines.find((l) => l.startsWith("error:"))?.replace(/^error:\s*/, "");
  return `deno compile exited ${code}: ${causes.at(-1) ?? first ?? "no error message"}`;
}

/** Runs `compile` with command-line arguments `args`; returns the exit code. */
export function main(args: string[]): Promise<number> {
  return runTask("compile", args, async (argv) => {
    const cmd = parseCommand(COMPILE_FLAGS, argv);
    if (cmd.help) {
      return console.log(flagHelp(COMPILE_FLAGS, "usage: deno task compile [--output dist/eaglet]"));
    }
    const v = cmd.settings;
    const entry = new URL("./eaglet.ts", import.meta.url).pathname;
    const out = await new Deno.Command(Deno.execPath(), {
      args: ["compile", "-A", ...(v.target ? ["--target", v.target] : []), "-o", v.output, entry],
      env: { NO_COLOR: "1" },
      stdout: "inherit",
      stderr: "piped",
    }).output();
    const stderr = new TextDecoder().decode(out.stderr);
    if (!out.success) throw new Error(compileFailure(stderr, out.code));
    if (stderr.trim()) console.error(stderr.trimEnd());
    console.log(`wrote ${v.output} (run it as ./${v.output.replace(/^\.\//, "")} demo)`);
  });
}

if (import.meta.main) Deno.exit(await main(Deno.args));
