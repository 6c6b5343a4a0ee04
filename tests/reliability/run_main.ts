/** Test helper: runs a task's `main` in-process with its console output captured. */

/** What a task's `main` returned and printed: stderr lines (console.error/warn) and stdout lines (console.log). */
export interface MainRun {
  code: number;
  errors: string[];
  output: string[];
}

/** Runs `main(args)` with console.error, console.warn and console.log captured (one entry per line). */
export async function runMain(main: (args: string[]) => Promise<number>, args: string[]): Promise<MainRun> {
  const errors: string[] = [], output: string[] = [];
  const lines = (to: string[]) => (...a: unknown[]) => to.push(...a.map(String).join(" ").split("\n"));
  const [error, warn, log] = [console.error, console.warn, console.log];
  console.error = console.warn = lines(errors);
  console.log = lines(output);
  try {
    return { code: await main(args), errors, output };
  } finally {
    [console.error, console.warn, console.log] = [error, warn, log];
  }
}
