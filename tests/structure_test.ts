/**
 * The shape of the source tree, measured with the TypeScript parser:
 * - no function, method, accessor, arrow function or constructor in lib/ or tasks/ is over 150 lines;
 * - every import (`import`, `import type`, re-exports, `import()` and `import("…").T` types) in kernels/, lib/
 *   and tasks/ looks down the layers (or stays in its own layer):
 *   kernels (0) → lib/gpu, lib/tensor.ts, lib/flags.ts, lib/npm.ts (1) → lib/ops (2) → lib/io, lib/dist (3) →
 *   lib/data (4) → lib/models (5) → lib/offline, lib/eval (6) → lib/train (7) → lib/cli, lib/bench (8) →
 *   tasks (9).
 * A file under those folders that no layer names is itself a failure: a new folder gets its layer here.
 */
import assert from "node:assert/strict";
import { dirname, join, relative, resolve } from "node:path";
import { fileURLToPath } from "node:url";
import ts from "typescript";

const ROOT = resolve(dirname(fileURLToPath(import.meta.url)), "..");

/** The most lines a function body may span (its first line to its last, both included). */
const MAX_FUNCTION_LINES = 150;

/** Layer of each path prefix (repository-relative, "/" separators); the longest matching prefix wins. */
const LAYERS: Array<[prefix: string, layer: number]> = [
  ["kernels/", 0],
  ["lib/gpu/", 1],
  ["lib/tensor.ts", 1],
  ["lib/flags.ts", 1],
  ["lib/npm.ts", 1],
  ["lib/ops/", 2],
  ["lib/io/", 3],
  ["lib/dist/", 3],
  ["lib/data/", 4],
  ["lib/models/", 5],
  ["lib/offline/", 6],
  ["lib/eval/", 6],
  ["lib/train/", 7],
  ["lib/cli/", 8],
  ["lib/bench/", 8],
  ["tasks/", 9],
];

function layerOf(path: string): number | null {
  let best: [string, number] | null = null;
  for (const entry of LAYERS) {
    if (path.startsWith(entry[0]) && (best === null || entry[0].length > best[0].length)) best = entry;
  }
  return best === null ? null : best[1];
}

/** Repository-relative paths of the .ts files under `dir`, sorted. */
function sourceFiles(dir: string): string[] {
  const out: string[] = [];
  const walk = (rel: string) => {
    for (const e of Deno.readDirSync(join(ROOT, rel))) {
      const child = `${rel}/${e.name}`;
      if (e.isDirectory) walk(child);
      else if (e.isFile && e.name.endsWith(".ts")) out.push(child);
    }
  };
  walk(dir);
  return out.sort();
}

function parse(path: string): ts.SourceFile {
  return ts.createSourceFile(path, Deno.readTextFileSync(join(ROOT, path)), ts.ScriptTarget.Latest, true);
}

function line(sf: ts.SourceFile, pos: number): number {
  return sf.getLineAndCharacterOfPosition(pos).line + 1;
}

/** A readable name for a function-like node: its own name, or the variable or property it is assigned to. */
function functionName(node: ts.Node): string {
  if (ts.isConstructorDeclaration(node)) {
    const cls = node.parent as ts.ClassLikeDeclaration;
    return `${cls.name?.text ?? "<class>"}.constructor`;
  }
  const named = node as ts.FunctionLikeDeclaration;
  if (named.name !== undefined) {
    const own = named.name.getText();
    const parent = node.parent;
    return ts.isClassLike(parent) && parent.name ? `${parent.name.text}.${own}` : own;
  }
  const parent = node.parent;
  if (
    ts.isVariableDeclaration(parent) || ts.isPropertyAssignment(parent) || ts.isPropertyDeclaration(parent)
  ) {
    return parent.name.getText();
  }
  return `<anonymous ${ts.SyntaxKind[node.kind]}>`;
}

/** Every function-like node with a body in `sf`: its first line, name and length in lines. */
function functionsIn(sf: ts.SourceFile): Array<{ line: number; name: string; lines: number }> {
  const found: Array<{ line: number; name: string; lines: number }> = [];
  const visit = (node: ts.Node) => {
    if (ts.isFunctionLike(node) && (node as ts.FunctionLikeDeclaration).body !== undefined) {
      const start = line(sf, node.getStart(sf));
      found.push({ line: start, name: functionName(node), lines: line(sf, node.getEnd()) - start + 1 });
    }
    ts.forEachChild(node, visit);
  };
  visit(sf);
  return found;
}

/** Every module specifier `sf` names, with its line: static and type imports, re-exports, import(). */
function importsIn(sf: ts.SourceFile): Array<{ line: number; spec: string }> {
  const found: Array<{ line: number; spec: string }> = [];
  const add = (node: ts.Node, spec: ts.Node | undefined) => {
    if (spec !== undefined && ts.isStringLiteralLike(spec)) {
      found.push({ line: line(sf, node.getStart(sf)), spec: spec.text });
    }
  };
  const visit = (node: ts.Node) => {
    if (ts.isImportDeclaration(node) || ts.isExportDeclaration(node)) add(node, node.moduleSpecifier);
    else if (ts.isImportEqualsDeclaration(node) && ts.isExternalModuleReference(node.moduleReference)) {
      add(node, node.moduleReference.expression);
    } else if (ts.isCallExpression(node) && node.expression.kind === ts.SyntaxKind.ImportKeyword) {
      add(node, node.arguments[0]);
    } else if (ts.isImportTypeNode(node) && ts.isLiteralTypeNode(node.argument)) {
      add(node, node.argument.literal);
    }
    ts.forEachChild(node, visit);
  };
  visit(sf);
  return found;
}

/** `file:line name (N lines)` for every function-like node in `path` longer than {@link MAX_FUNCTION_LINES}. */
function longFunctions(path: string): string[] {
  return functionsIn(parse(path)).filter((f) => f.lines > MAX_FUNCTION_LINES)
    .map((f) => `${path}:${f.line} ${f.name} (${f.lines} lines)`);
}

/** `file:line → target (layer a imports layer b)` for every import of `path` that runs up the layers. */
function upwardImports(path: string): string[] {
  const from = layerOf(path);
  if (from === null) return [`${path}: in no layer (give its folder one in tests/structure_test.ts)`];
  const found: string[] = [];
  for (const { line, spec } of importsIn(parse(path))) {
    if (!spec.startsWith(".")) continue; // npm:, node: and import-map names are outside the layers
    const target = relative(ROOT, resolve(ROOT, dirname(path), spec)).replaceAll("\\", "/");
    const to = layerOf(target);
    if (to === null && !target.startsWith("lib/") && !target.startsWith("kernels/")) continue;
    if (to === null || to > from) {
      found.push(`${path}:${line} → ${target} (layer ${from} imports layer ${to ?? "none"})`);
    }
  }
  return found;
}

Deno.test("structure: no function in lib/ or tasks/ is over 150 lines", () => {
  const offenders = [...sourceFiles("lib"), ...sourceFiles("tasks")].flatMap(longFunctions);
  assert.deepEqual(offenders, [], `functions over ${MAX_FUNCTION_LINES} lines:\n  ${offenders.join("\n  ")}`);
});

Deno.test("structure: imports in kernels/, lib/ and tasks/ only look down the layers", () => {
  const files = [...sourceFiles("kernels"), ...sourceFiles("lib"), ...sourceFiles("tasks")];
  const offenders = files.flatMap(upwardImports);
  assert.deepEqual(offenders, [], `imports running up the layers:\n  ${offenders.join("\n  ")}`);
});

Deno.test("structure: the parser sees every kind of function and import", () => {
  // A guard against the walkers silently missing a node kind after a TypeScript upgrade.
  const src = [
    `import type { A } from "./a.ts";`,
    `export { B } from "./b.ts";`,
    `export * from "./c.ts";`,
    `type D = import("./d.ts").D;`,
    `const e = await import("./e.ts");`,
    `function f() {}`,
    `const g = () => 1;`,
    `class H { constructor() {} m() {} get n() { return 1; } }`,
    `const o = { p: function () {} };`,
  ].join("\n");
  const sf = ts.createSourceFile("x.ts", src, ts.ScriptTarget.Latest, true);
  const specs = importsIn(sf).map((i) => i.spec);
  const names = functionsIn(sf).map((f) => f.name);
  assert.deepEqual(specs, ["./a.ts", "./b.ts", "./c.ts", "./d.ts", "./e.ts"]);
  assert.deepEqual(names, ["f", "g", "H.constructor", "H.m", "H.n", "p"]);
});
