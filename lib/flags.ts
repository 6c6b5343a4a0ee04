/**
 * Flags, declared once. A task lists its flags in a table: flag name → {@link FlagSpec}, a plain object
 * literal (`as const satisfies FlagTable`) giving its kind, its default (or `required: true`), its help and
 * its checks (bounds, choices, a list's length, a `check` function). From the table come:
 *
 * - the settings type, computed by {@link Settings}: the flag names in camelCase (`--max-length` →
 *   `maxLength`), each with its value type (`number | null` for an optional flag without a default, the
 *   union of the choices for a choice flag);
 * - the argv parser, {@link parseCommand} (node:util `parseArgs` underneath, plus the conversions and checks):
 *   every error is one line naming the flag;
 * - the settings builder for library callers, {@link settingsOf}: a partial object in, defaults filled and
 *   every value checked by the same rules, errors naming the key;
 * - the `--help` text, {@link flagHelp} (every flag with its default), and the README's table of the flags,
 *   {@link flagMarkdown}.
 *
 * `--help` and `--debug` belong to every task and are added by the parser and the help text. The tables are
 * object literals, not function calls, so that their types are explicit for `deno lint`'s no-slow-types.
 *
 * This module is a leaf: it imports nothing from the project, so every layer may use it.
 */
import { parseArgs } from "node:util";

/** A bad flag, setting or value; the message is one line and names it. */
export class FlagError extends Error {
  /** Error name shown in stack traces and messages. */
  override name = "FlagError";
}

/** The value kinds a flag can have. */
export type FlagKind = "string" | "int" | "float" | "bool" | "ints" | "strings" | "choice";

/** Bounds of a number (of each element of a list): inclusive `min`/`max`, exclusive `above`/`below`. */
export interface Bounds {
  /** Smallest allowed value. */
  readonly min?: number;
  /** Largest allowed value. */
  readonly max?: number;
  /** Values must be greater than this. */
  readonly above?: number;
  /** Values must be less than this. */
  readonly below?: number;
}

/** What every flag declaration may say besides its kind and default. */
export interface FlagBase {
  /** One line of help. */
  readonly help: string;
  /** True when the flag must be given (it then has no default). */
  readonly required?: boolean;
  /** Placeholder shown in the help (default: `value`; int lists `a,b,c`). */
  readonly arg?: string;
  /** Accepted so SpecForge command lines run unchanged; has no effect here (said in the help). */
  readonly compat?: boolean;
  /** Other YAML names of the setting. */
  readonly aliases?: readonly string[];
  /** YAML section of the setting (none: the top level). */
  readonly section?: string;
}

/** A string flag; `check` returns what the value must be, or null when it is fine. */
export interface StringFlag extends FlagBase {
  /** Its kind. */
  readonly kind: "string";
  /** The value when not given (null or absent: none). */
  readonly default?: string | null;
  /** A further check: what the value must be, or null when it is fine. */
  readonly check?: (v: string) => string | null;
}

/** An integer flag. */
export interface IntFlag extends FlagBase, Bounds {
  /** Its kind. */
  readonly kind: "int";
  /** The value when not given (null or absent: none). */
  readonly default?: number | null;
  /** A further check: what the value must be, or null when it is fine. */
  readonly check?: (v: number) => string | null;
}

/** A number flag. */
export interface FloatFlag extends FlagBase, Bounds {
  /** Its kind. */
  readonly kind: "float";
  /** The value when not given (null or absent: none). */
  readonly default?: number | null;
}

/** A switch: false unless given (or its default). */
export interface BoolFlag extends FlagBase {
  /** Its kind. */
  readonly kind: "bool";
  /** The value when not given (absent: false). */
  readonly default?: boolean;
}

/** A comma-separated list of integers (`1,15,28`; a YAML list), each within the bounds. */
export interface IntListFlag extends FlagBase, Bounds {
  /** Its kind. */
  readonly kind: "ints";
  /** The value when not given (null or absent: none). */
  readonly default?: readonly number[] | null;
  /** The number of elements the list must have. */
  readonly length?: number;
}

/** A flag given any number of times (`--input a --input b`); its value lists them ([] when not given). */
export interface StringListFlag extends FlagBase {
  /** Its kind. */
  readonly kind: "strings";
}

/** One of a fixed set of strings. */
export interface ChoiceFlag extends FlagBase {
  /** Its kind. */
  readonly kind: "choice";
  /** The allowed values. */
  readonly choices: readonly string[];
  /** The value when not given (null or absent: none). */
  readonly default?: string | null;
}

/** One flag's declaration. */
export type FlagSpec =
  | StringFlag
  | IntFlag
  | FloatFlag
  | BoolFlag
  | IntListFlag
  | StringListFlag
  | ChoiceFlag;

/** A task's flags by name (the names without the leading dashes). */
export type FlagTable = Readonly<Record<string, FlagSpec>>;

/** `max-new-tokens` → `maxNewTokens`. */
export type CamelCase<S extends string> = S extends `${infer H}-${infer T}`
  ? `${H}${Capitalize<CamelCase<T>>}`
  : S;

/** The value type of a flag's kind, before optionality. */
export type KindValue<F> = F extends { kind: "string" } ? string
  : F extends { kind: "int" | "float" } ? number
  : F extends { kind: "bool" } ? boolean
  : F extends { kind: "ints" } ? number[]
  : F extends { kind: "strings" } ? string[]
  : F extends { kind: "choice"; choices: readonly (infer C)[] } ? C
  : never;

/** True when a flag always has a value: required, a switch, a repeatable flag, or a non-null default. */
export type AlwaysSet<F> = F extends { required: true } ? true
  : F extends { kind: "bool" | "strings" } ? true
  : F extends { default: null } ? false
  : F extends { default: unknown } ? true
  : false;

/** The value type of a flag (with `| null` when it may be unset). */
export type FlagValue<F> = AlwaysSet<F> extends true ? KindValue<F> : KindValue<F> | null;

/** The settings a table of flags parses to: each flag's value under its camelCase name. */
export type Settings<T extends FlagTable> = {
  -readonly [K in keyof T & string as CamelCase<K>]: FlagValue<T[K]>;
};

/** The names of a table's required flags. */
export type RequiredNames<T extends FlagTable> = {
  [K in keyof T & string]: T[K] extends { required: true } ? K : never;
}[keyof T & string];

/** What a library caller passes for a table's settings: the required ones, and any of the others. */
export type SettingsInput<T extends FlagTable> =
  & { [K in RequiredNames<T> as CamelCase<K>]: FlagValue<T[K]> }
  & { [K in Exclude<keyof T & string, RequiredNames<T>> as CamelCase<K>]?: FlagValue<T[K]> };

/** `max-new-tokens` → `maxNewTokens` (the runtime side of {@link CamelCase}). */
export function camelCase(flag: string): string {
  return flag.replace(/-([a-z0-9])/g, (_, c: string) => c.toUpperCase());
}

// ---------------------------------------------------------------------------------------------------------
// Values.

/** What a value must be (the caller adds the flag's name and the value). */
class Invalid extends Error {}

/** A raw value in an error: numbers bare (also when given as text), anything else as JSON. */
function show(raw: unknown): string {
  if (typeof raw === "string" && raw.trim() !== "" && Number.isFinite(Number(raw))) return raw.trim();
  return JSON.stringify(raw) ?? String(raw);
}

/** "within [0, 1)", "at least 1", "positive", ...: what a bounded number must be, or null when it is fine. */
function outOf(b: Bounds, n: number): string | null {
  const lo = b.min !== undefined ? n >= b.min : b.above !== undefined ? n > b.above : true;
  const hi = b.max !== undefined ? n <= b.max : b.below !== undefined ? n < b.below : true;
  if (lo && hi) return null;
  const left = b.min !== undefined ? `[${b.min}` : b.above !== undefined ? `(${b.above}` : null;
  const right = b.max !== undefined ? `${b.max}]` : b.below !== undefined ? `${b.below})` : null;
  if (left && right) return `within ${left}, ${right}`;
  if (b.min !== undefined) return `at least ${b.min}`;
  if (b.above !== undefined) return b.above === 0 ? "positive" : `greater than ${b.above}`;
  if (b.max !== undefined) return `at most ${b.max}`;
  return `less than ${b.below}`;
}

/** A string of digits, a number or a YAML number as a number (NaN when it is none). */
function toNumber(raw: unknown): number {
  if (typeof raw === "number") return raw;
  return typeof raw === "string" && raw.trim() !== "" ? Number(raw) : NaN;
}

function toInt(raw: unknown, b: Bounds): number {
  const n = toNumber(raw);
  if (!Number.isSafeInteger(n)) {
    throw new Invalid(b.min !== undefined && b.min >= 0 ? "a non-negative integer" : "an integer");
  }
  const why = outOf(b, n);
  if (why) throw new Invalid(why);
  return n;
}

function toFloat(raw: unknown, b: Bounds): number {
  const n = toNumber(raw);
  if (!Number.isFinite(n)) throw new Invalid("a number");
  const why = outOf(b, n);
  if (why) throw new Invalid(why);
  return n;
}

function toStr(raw: unknown): string {
  if (typeof raw === "string") return raw;
  if (typeof raw === "number") return String(raw);
  throw new Invalid("a string");
}

function toInts(raw: unknown, spec: IntListFlag): number[] {
  const list = typeof raw === "string" ? raw.split(",").map((s) => s.trim()) : raw;
  const what = spec.min !== undefined && spec.min >= 0
    ? "a list of non-negative integers"
    : "a list of integers";
  if (!Array.isArray(list)) throw new Invalid(`${what} (e.g. 1,15,28)`);
  const out = list.map((x) => {
    const n = toNumber(x);
    if (!Number.isSafeInteger(n) || outOf(spec, n) !== null) throw new Invalid(what);
    return n;
  });
  if (spec.length !== undefined && out.length !== spec.length) {
    throw new Invalid(`a list of ${spec.length} values`);
  }
  return out;
}

/** Converts and checks a raw value (a command-line string, a YAML value or a library caller's value). */
function convert(spec: FlagSpec, raw: unknown): unknown {
  switch (spec.kind) {
    case "string": {
      const v = toStr(raw);
      const why = spec.check?.(v);
      if (why) throw new Invalid(why);
      return v;
    }
    case "int": {
      const v = toInt(raw, spec);
      const why = spec.check?.(v);
      if (why) throw new Invalid(why);
      return v;
    }
    case "float":
      return toFloat(raw, spec);
    case "bool":
      if (typeof raw === "boolean") return raw;
      if (raw === "true" || raw === "false") return raw === "true";
      throw new Invalid("true or false");
    case "ints":
      return toInts(raw, spec);
    case "strings":
      return (Array.isArray(raw) ? raw : [raw]).map(toStr);
    case "choice": {
      const v = toStr(raw);
      if (!spec.choices.includes(v)) throw new Invalid(`one of ${spec.choices.join(", ")}`);
      return v;
    }
  }
}

/** The value of a flag not given: its default (a fresh copy of a list), false for a switch, [] for a repeat. */
function defaultOf(spec: FlagSpec): unknown {
  switch (spec.kind) {
    case "bool":
      return spec.default ?? false;
    case "strings":
      return [];
    case "ints":
      return spec.default ? [...spec.default] : null;
    default:
      return spec.default ?? null;
  }
}

// ---------------------------------------------------------------------------------------------------------
// Settings from values.

/**
 * A raw value of `spec` (a command-line string, a YAML value or a library caller's value) converted and
 * checked; a bad one is a one-line {@link FlagError} naming it by `name` (e.g. `--max-length`, `maxLength` or
 * `run.yaml: data.max_length`).
 */
export function parseValue(spec: FlagSpec, raw: unknown, name: string): unknown {
  try {
    return convert(spec, raw);
  } catch (e) {
    if (e instanceof Invalid) throw new FlagError(`${name} must be ${e.message}, got ${show(raw)}`);
    throw e;
  }
}

/**
 * Checks that `o` holds every setting of `table`: with each value parsed by its flag's rules on the way in
 * (or its default), this is what makes `o` a `Settings<T>` without a cast.
 */
function isSettings<T extends FlagTable>(table: T, o: Record<string, unknown>): o is Settings<T> {
  return Object.keys(table).every((flag) => camelCase(flag) in o);
}

/**
 * The settings of `table` from values already parsed (flag name → value): defaults fill the flags not
 * given; a missing required flag is an error listing every one missing, each written by `name`, then `hint`.
 */
export function resolveSettings<T extends FlagTable>(
  table: T,
  given: ReadonlyMap<string, unknown>,
  name: (flag: string) => string = (f) => `--${f}`,
  hint = " (see --help)",
): Settings<T> {
  const missing = Object.entries(table).filter(([f, spec]) => spec.required && given.get(f) === undefined);
  if (missing.length) throw new FlagError(`missing ${missing.map(([f]) => name(f)).join(", ")}${hint}`);
  const out: Record<string, unknown> = {};
  for (const [flag, spec] of Object.entries(table)) {
    const v = given.get(flag);
    out[camelCase(flag)] = v === undefined ? defaultOf(spec) : v;
  }
  if (!isSettings(table, out)) throw new Error("unreachable: a setting was left out");
  return out;
}

/**
 * The settings of `table` from a library caller's object (camelCase keys, as {@link Settings}): each value
 * checked as its flag's, defaults filled; unknown keys and missing required settings are errors naming them.
 */
export function settingsOf<T extends FlagTable>(table: T, input: SettingsInput<T>): Settings<T> {
  const byKey = new Map(Object.keys(table).map((f) => [camelCase(f), f]));
  const given = new Map<string, unknown>();
  for (const [key, value] of Object.entries(input)) {
    const flag = byKey.get(key);
    if (flag === undefined) throw new FlagError(`unknown setting '${key}'`);
    if (value === undefined) continue;
    given.set(flag, value === null && !table[flag].required ? null : parseValue(table[flag], value, key));
  }
  return resolveSettings(table, given, camelCase, "");
}

// ---------------------------------------------------------------------------------------------------------
// The command line.

/** What {@link readArgs} found on a command line. */
export interface ReadArgs {
  /** `--help` was given. */
  help: boolean;
  /** `--debug` was given. */
  debug: boolean;
  /** The flags given, by name, their values converted and checked. */
  given: Map<string, unknown>;
  /** Arguments that are not flags (only when the task takes them). */
  positionals: string[];
}

/** A value that starts with "-" but is a number (or a list of them), not a flag: `-4`, `-0.5`, `-1,2`, `-inf`. */
const NEGATIVE_VALUE = /^-(\d|\.\d|inf)/i;

/**
 * `--flag -4` as `--flag=-4` for a flag that takes a value: node's parseArgs would call `-4` an ambiguous
 * option, so a negative number after a space reaches the flag's own range check instead.
 */
function joinNegativeValues(table: FlagTable, argv: string[]): string[] {
  const out: string[] = [];
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i], next = argv[i + 1];
    const spec = a.startsWith("--") && !a.includes("=") ? table[a.slice(2)] : undefined;
    if (spec && spec.kind !== "bool" && next !== undefined && NEGATIVE_VALUE.test(next)) {
      out.push(`${a}=${next}`);
      i++;
    } else out.push(a);
  }
  return out;
}

/**
 * Reads a command line against `table` (plus `--help` and `--debug`): unknown flags, a missing value and bad
 * values are one-line errors naming the flag; `--no-<switch>` gives a switch false. Defaults are not applied
 * (see {@link resolveSettings}).
 */
export function readArgs(table: FlagTable, argv: string[], opts: { positionals?: boolean } = {}): ReadArgs {
  const options: Record<string, { type: "string" | "boolean"; multiple?: boolean }> = {
    help: { type: "boolean" },
    debug: { type: "boolean" },
  };
  for (const [flag, spec] of Object.entries(table)) {
    options[flag] = spec.kind === "bool"
      ? { type: "boolean" }
      : { type: "string", ...(spec.kind === "strings" ? { multiple: true } : {}) };
  }
  let parsed;
  const negated = new Set<string>();
  try {
    const args = joinNegativeValues(table, argv).filter((a) => {
      // --no-<switch> turns a switch off (one whose default is on), unless a flag has that very name.
      const flag = a.startsWith("--no-") ? a.slice(5) : "";
      if (!(table[flag]?.kind === "bool" && !(a.slice(2) in table))) return true;
      negated.add(flag);
      return false;
    });
    parsed = parseArgs({ args, options, strict: true, allowPositionals: opts.positionals ?? false });
  } catch (e) {
    throw new FlagError((e instanceof Error ? e.message : String(e)).split("\n")[0]);
  }
  const v: Record<string, unknown> = parsed.values;
  for (const flag of negated) {
    if (v[flag] !== undefined) throw new FlagError(`--${flag} and --no-${flag} are both given`);
    v[flag] = false;
  }
  const given = new Map<string, unknown>();
  for (const [flag, spec] of Object.entries(table)) {
    if (v[flag] !== undefined) given.set(flag, parseValue(spec, v[flag], `--${flag}`));
  }
  return { help: v.help === true, debug: v.debug === true, given, positionals: parsed.positionals };
}

/** What {@link parseCommand} returns: a request for help, or the settings. */
export type Command<T extends FlagTable> =
  | { help: true; debug: boolean }
  | { help: false; debug: boolean; settings: Settings<T>; positionals: string[] };

/**
 * Parses a command line into the settings of `table`: flags converted and checked, defaults filled, required
 * flags present (unless `--help` is given). Errors are one line naming the flag.
 */
export function parseCommand<T extends FlagTable>(
  table: T,
  argv: string[],
  opts: { positionals?: boolean } = {},
): Command<T> {
  const r = readArgs(table, argv, opts);
  if (r.help) return { help: true, debug: r.debug };
  return {
    help: false,
    debug: r.debug,
    settings: resolveSettings(table, r.given),
    positionals: r.positionals,
  };
}

// ---------------------------------------------------------------------------------------------------------
// Help and the README.

/** A default as the help and the README write it; null when there is none to show. */
function defaultText(spec: FlagSpec): string | null {
  const d: unknown = "default" in spec ? spec.default : null;
  if (d === null || d === undefined || spec.kind === "bool" && d === false) return null;
  if (Array.isArray(d)) return d.length ? d.join(",") : null;
  return String(d);
}

/** The width the help text is wrapped to. */
const HELP_WIDTH = 110;

/** `text` broken at spaces into lines of at most `width` characters, each starting with `indent`. */
function wrap(text: string, indent: string, width: number): string {
  const lines: string[] = [];
  let line = "";
  for (const word of text.split(" ")) {
    if (line && indent.length + line.length + 1 + word.length > width) {
      lines.push(indent + line);
      line = word;
    } else line = line ? `${line} ${word}` : word;
  }
  lines.push(indent + line);
  return lines.join("\n");
}

/** The `--help` text of a task: `usage` (and `about`), then every flag with its help and default. */
export function flagHelp(table: FlagTable, usage: string, about = ""): string {
  const lines = Object.entries(table).map(([flag, spec]) => {
    const arg = spec.kind === "bool" ? "" : ` <${spec.arg ?? (spec.kind === "ints" ? "a,b,c" : "value")}>`;
    const def = spec.kind === "bool" && spec.default ? `true; --no-${flag} turns it off` : defaultText(spec);
    const choices = spec.kind === "choice" && !spec.compat ? ` {${spec.choices.join(", ")}}` : "";
    const tail = spec.required ? " (required)" : def === null ? "" : ` (default: ${def})`;
    const compat = spec.compat ? " [accepted for SpecForge compatibility]" : "";
    return `  --${flag}${arg}\n${wrap(`${spec.help}${choices}${tail}${compat}`, "      ", HELP_WIDTH)}`;
  });
  lines.push("  --debug\n      print stack traces on errors", "  --help\n      this text");
  return `${usage}\n${about ? `\n${about}\n` : ""}\n${lines.join("\n")}\n`;
}

/** How the README's tables name each kind. */
const KIND_NAMES: Record<FlagKind, string> = {
  string: "string",
  int: "int",
  float: "float",
  bool: "bool",
  ints: "int list",
  strings: "string, repeatable",
  choice: "choice",
};

/** A Markdown table cell: pipes escaped, angle brackets kept from turning into HTML. */
function cell(s: string): string {
  return s.replace(/\|/g, "\\|").replace(/</g, "\\<");
}

/** The README table of `table`'s flags: flag, type, default and help, one row per flag. */
export function flagMarkdown(table: FlagTable): string {
  const rows = Object.entries(table).map(([flag, spec]) => {
    const def = defaultText(spec);
    const type = spec.kind === "choice" ? spec.choices.join(" \\| ") : KIND_NAMES[spec.kind];
    const compat = spec.compat ? " (accepted for SpecForge compatibility)" : "";
    return [
      `\`--${flag}\``,
      type,
      spec.required ? "required" : def === null ? "" : `\`${def}\``,
      cell(spec.help) + compat,
    ];
  });
  const head = ["flag", "type", "default", "description"];
  const widths = head.map((h, i) => Math.max(h.length, 3, ...rows.map((r) => r[i].length)));
  const line = (cells: string[]) => `| ${cells.map((c, i) => c.padEnd(widths[i])).join(" | ")} |`;
  return [line(head), line(widths.map((w) => "-".repeat(w))), ...rows.map(line)].join("\n");
}
