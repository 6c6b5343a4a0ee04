/**
 * The common frame of every task's `main`: runs the task's body, turns a thrown error into one line on stderr
 * (`<task>: <message>`, the whole stack with `--debug`) and an exit code. Each tasks/<task>.ts exports
 * `main(args)` built on it and ends with `if (import.meta.main) Deno.exit(await main(Deno.args));`, so the
 * same function runs from `deno task <task>`, from the `eaglet` dispatcher and from its single-file bundle
 * (where `deno bundle` turns `import.meta.main` of every inlined module into `false`).
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

/** A flag's value as a number, or a one-line error naming the flag. */
export function numberFlag(
  name: string,
  value: string | undefined,
  fallback: number,
  integer = false,
): number {
  if (value === undefined) return fallback;
  const n = Number(value);
  if (value.trim() === "" || !Number.isFinite(n) || (integer && !Number.isInteger(n))) {
    throw new Error(`--${name} must be ${integer ? "an integer" : "a number"}, got "${value}"`);
  }
  return n;
}

/** A flag of a task's flag table: its kind, default and help text, as node:util parseArgs takes them. */
export interface FlagHelp {
  type: "string" | "boolean";
  default?: string | boolean;
  help: string;
}

/** `--help` text: the usage line, then each flag with its help and, when it has one, its default. */
export function flagUsage(usageLine: string, flags: Record<string, FlagHelp>): string {
  const lines = Object.entries(flags).map(([name, f]) => {
    const def = "default" in f ? ` (default: ${f.default})` : "";
    return `  --${name}${f.type === "string" ? " <value>" : ""}\n      ${f.help}${def}`;
  });
  return `${usageLine}\n\n${lines.join("\n")}\n`;
}
