/**
 * The common frame of every task's `main`: runs the task's body, turns a thrown error into one line on stderr
 * (`<task>: <message>`, the whole stack with `--debug`) and an exit code. Each tasks/<task>.ts exports
 * `main(args)` built on it and ends with `if (import.meta.main) Deno.exit(await main(Deno.args));`, so the
 * same function runs from `deno task <task>`, from the `eaglet` dispatcher and from its single-file bundle
 * (where `deno bundle` turns `import.meta.main` of every inlined module into `false`). A task's flags are
 * declared and parsed with lib/flags.ts; its errors (one line naming the flag) come here.
 */

/** The body of a task: returns its exit code, or nothing for success. */
export type TaskBody = (args: string[]) => Promise<number | void>;

/**
 * Runs `body(args)` and returns its exit code: 0 when it returns nothing, 1 when it throws (the error is
 * printed as `<name>: <first line of the message>`, or in full when `args` include `--debug`).
 */
export async function runTask(name: string, args: string[], body: TaskBody): Promise<number> {
  try {
    return (await body(args)) ?? 0;
  } catch (e) {
    if (args.includes("--debug")) console.error(e);
    else {
      const message = String((e as Error)?.message ?? e).split("\n")[0];
      console.error(message.startsWith(`${name}: `) ? message : `${name}: ${message}`);
    }
    return 1;
  }
}
