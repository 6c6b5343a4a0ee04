/**
 * `deno task serve`: serves this checkout on 127.0.0.1 so that a notebook or a script anywhere on the machine
 * imports the library by URL (`import * as eaglet from "http://127.0.0.1:8000/mod.ts"`), with no import map:
 * lib/npm.ts names the npm packages with their versions, and Deno fetches them from the npm registry.
 */
import { serveDirectory } from "../lib/cli/serve.ts";
import { runTask } from "../lib/cli/run.ts";
import { flagHelp, type FlagTable, parseCommand } from "../lib/flags.ts";

/** The flags of `serve`. */
export const SERVE_FLAGS = {
  port: { kind: "int", default: 8000, min: 0, max: 65535, help: "port on 127.0.0.1 (0: any free port)" },
} as const satisfies FlagTable;

/** Runs `serve` with command-line arguments `args` until interrupted; returns the exit code. */
export function main(args: string[]): Promise<number> {
  return runTask("serve", args, async (argv) => {
    const cmd = parseCommand(SERVE_FLAGS, argv);
    if (cmd.help) return console.log(flagHelp(SERVE_FLAGS, "usage: deno task serve [--port 8000]"));
    const root = new URL("..", import.meta.url).pathname;
    const server = serveDirectory(root, cmd.settings.port);
    console.log(`serving ${root} at ${server.url}`);
    console.log(`in a notebook or a script: import * as eaglet from "${server.url}mod.ts";`);
    await server.finished;
  });
}

if (import.meta.main) Deno.exit(await main(Deno.args));
