/**
 * Property-based fuzzing (fast-check) of the two parsers every user file goes through: the safetensors
 * header parser (lib/io/safetensors.ts `parseSafetensors`) and the jsonl record reader and validator
 * (lib/data/records.ts `readRecords`, `parseRecord`). Valid inputs round-trip exactly; arbitrary or mutated
 * inputs either parse or raise the module's own error with one line naming the file (and line), never
 * another exception.
 */
import assert from "node:assert/strict";
import { join } from "node:path";
import { fc } from "./npm.ts";
import {
  parseSafetensors,
  type RawTensor,
  SAFETENSORS_DTYPES,
  type SafetensorsDtype,
  SafetensorsError,
  serializeSafetensors,
} from "../../lib/io/safetensors.ts";
import { type DataRecord, parseRecord, readRecords, recordToJson } from "../../lib/data/records.ts";
import { DataError } from "../../lib/data/errors.ts";

const FILE = "fuzz.safetensors";
const DTYPES = Object.keys(SAFETENSORS_DTYPES) as SafetensorsDtype[];

/** A tensor of a random dtype and shape (zeros allowed) with random bytes. */
const tensor: fc.Arbitrary<RawTensor> = fc.record({
  dtype: fc.constantFrom(...DTYPES),
  shape: fc.array(fc.integer({ min: 0, max: 4 }), { maxLength: 3 }),
}).chain(({ dtype, shape }) => {
  const n = shape.reduce((a, b) => a * b, 1) * SAFETENSORS_DTYPES[dtype];
  return fc.uint8Array({ minLength: n, maxLength: n }).map((bytes) => ({
    dtype,
    shape,
    bytes: new Uint8Array(bytes),
  }));
});

/** Strings of the characters that break messages and parsers: line breaks, quotes, NUL, non-ASCII. */
const hostile = fc.string({
  unit: fc.constantFrom(
    "a",
    "Z",
    " ",
    "\n",
    "\r",
    "\u2028",
    "\u2029",
    "\u001b",
    "\u007f",
    "'",
    '"',
    "\\",
    "é",
    "\u0000",
    "{",
  ),
  maxLength: 8,
});

/**
 * Characters that break a one-line message or drive a terminal: line breaks (\n, \r, U+2028, U+2029) and the
 * other C0 controls and DEL (as lib/io/printable.ts quotes them).
 */
// deno-lint-ignore no-control-regex
const BREAKS = /[\u0000-\u001f\u007f\u2028\u2029]/;

/** Asserts `f()` returns, or throws `ErrorClass` with a one-line message containing `name`. */
function parsesOrNames(f: () => unknown, ErrorClass: new (...a: never[]) => Error, name: string): void {
  try {
    f();
  } catch (e) {
    assert.ok(e instanceof ErrorClass, `${(e as Error)?.name}: ${(e as Error)?.message}`);
    assert.doesNotMatch(e.message, BREAKS, `one line: ${JSON.stringify(e.message)}`);
    assert.ok(e.message.includes(name), `names ${name}: ${e.message}`);
  }
}

Deno.test("fuzz: safetensors files written by serializeSafetensors parse back exactly", () => {
  fc.assert(
    fc.property(
      fc.uniqueArray(fc.tuple(fc.string({ minLength: 1, maxLength: 12, unit: "binary" }), tensor), {
        maxLength: 5,
        selector: ([name]) => name,
      }),
      fc.dictionary(fc.string({ maxLength: 6 }), fc.string({ maxLength: 6 }), { maxKeys: 3 }),
      (entries, meta) => {
        fc.pre(entries.every(([name]) => name !== "__metadata__"));
        const bytes = serializeSafetensors(entries, meta);
        const back = parseSafetensors(bytes, FILE);
        assert.deepEqual([...back.tensors.keys()].sort(), entries.map(([n]) => n).sort());
        for (const [name, t] of entries) {
          const got = back.tensors.get(name)!;
          assert.equal(got.dtype, t.dtype);
          assert.deepEqual(got.shape, t.shape);
          assert.deepEqual([...got.bytes], [...t.bytes]);
        }
        assert.deepEqual(back.metadata, { ...meta });
      },
    ),
    { numRuns: 400 },
  );
});

Deno.test("fuzz: arbitrary, truncated and mutated safetensors bytes parse or fail naming the file", () => {
  const valid = serializeSafetensors([["w", { dtype: "F32", shape: [2, 2], bytes: new Uint8Array(16) }]]);
  fc.assert(
    fc.property(fc.uint8Array({ maxLength: 64 }), (b) => {
      parsesOrNames(() => parseSafetensors(new Uint8Array(b), FILE), SafetensorsError, FILE);
    }),
    { numRuns: 500 },
  );
  fc.assert(
    fc.property(fc.integer({ min: 0, max: valid.length }), (n) => {
      parsesOrNames(() => parseSafetensors(valid.slice(0, n), FILE), SafetensorsError, FILE);
    }),
    { numRuns: 200 },
  );
  fc.assert(
    fc.property(fc.integer({ min: 0, max: valid.length - 1 }), fc.integer({ min: 0, max: 255 }), (at, v) => {
      const b = valid.slice();
      b[at] = v;
      parsesOrNames(() => parseSafetensors(b, FILE), SafetensorsError, FILE);
    }),
    { numRuns: 500 },
  );
});

/** A JSON header value of the kinds a hostile header holds, for a random tensor entry. */
const headerValue = fc.oneof(
  fc.record({
    dtype: fc.oneof(fc.constantFrom(...DTYPES), fc.string({ maxLength: 5 }), fc.integer()),
    shape: fc.oneof(
      fc.array(fc.oneof(fc.integer({ min: -3, max: 5 }), fc.double(), fc.constant(2 ** 60)), {
        maxLength: 3,
      }),
      fc.string(),
    ),
    data_offsets: fc.oneof(
      fc.tuple(fc.integer({ min: -8, max: 40 }), fc.integer({ min: -8, max: 40 })),
      fc.array(fc.integer(), { maxLength: 3 }),
      fc.constant(null),
    ),
  }, { requiredKeys: [] }),
  fc.jsonValue({ maxDepth: 2, stringUnit: "binary" }),
);

Deno.test("fuzz: hostile safetensors headers parse consistently or fail naming the file", () => {
  fc.assert(
    fc.property(
      fc.dictionary(fc.oneof(fc.string({ maxLength: 8 }), hostile), headerValue, { maxKeys: 4 }),
      fc.integer({ min: 0, max: 48 }),
      (header, dataBytes) => {
        const json = new TextEncoder().encode(JSON.stringify(header));
        const b = new Uint8Array(8 + json.length + dataBytes);
        new DataView(b.buffer).setBigUint64(0, BigInt(json.length), true);
        b.set(json, 8);
        parsesOrNames(
          () => {
            const { tensors } = parseSafetensors(b, FILE);
            for (const [, t] of tensors) {
              const n = t.shape.reduce((x, y) => x * y, 1) * SAFETENSORS_DTYPES[t.dtype];
              assert.equal(t.bytes.byteLength, n, "a parsed tensor's bytes match its dtype and shape");
            }
          },
          SafetensorsError,
          FILE,
        );
      },
    ),
    { numRuns: 1000 },
  );
});

/** A file of `json` (any text) as its header, with the length prefix `len` (default: its UTF-8 length). */
function withHeader(json: string, dataBytes: number, len?: bigint): Uint8Array<ArrayBuffer> {
  const text = new TextEncoder().encode(json);
  const b = new Uint8Array(8 + text.length + dataBytes);
  new DataView(b.buffer).setBigUint64(0, len ?? BigInt(text.length), true);
  b.set(text, 8);
  return b;
}

/**
 * What a parse that returns must satisfy: every tensor's bytes match its dtype and shape (so none was read
 * past the end of the file), and the metadata holds strings only.
 */
function assertConsistent(parsed: ReturnType<typeof parseSafetensors>): void {
  for (const [name, t] of parsed.tensors) {
    assert.ok(Object.hasOwn(SAFETENSORS_DTYPES, t.dtype), `${name}: dtype ${t.dtype}`);
    assert.ok(t.shape.every((d) => Number.isSafeInteger(d) && d >= 0), `${name}: shape ${t.shape}`);
    const n = t.shape.reduce((x, y) => x * y, 1) * SAFETENSORS_DTYPES[t.dtype];
    assert.equal(t.bytes.byteLength, n, `${name}: bytes match dtype and shape`);
  }
  for (const v of Object.values(parsed.metadata)) assert.equal(typeof v, "string");
}

/** A tensor entry, valid or not, written as JSON text. */
const entryText = fc.oneof(
  fc.record({
    dtype: fc.constantFrom(...DTYPES),
    shape: fc.array(fc.nat({ max: 3 }), { maxLength: 2 }),
    data_offsets: fc.tuple(fc.nat({ max: 24 }), fc.nat({ max: 24 })),
  }).map((e) => JSON.stringify(e)),
  headerValue.map((v) => JSON.stringify(v)),
  // Numbers JSON.parse rounds or overflows, and numbers as strings.
  fc.constantFrom(
    '{"dtype":"U8","shape":[1e400],"data_offsets":[0,0]}',
    '{"dtype":"U8","shape":[9007199254740993],"data_offsets":[0,9007199254740993]}',
    '{"dtype":"U8","shape":[2.0],"data_offsets":[0,2.0]}',
    '{"dtype":"U8","shape":[-0],"data_offsets":[-0,0]}',
    '{"dtype":"U8","shape":["2"],"data_offsets":["0","2"]}',
    '{"dtype":"F64","shape":[4503599627370496,4503599627370496,0],"data_offsets":[0,0]}',
  ),
);

/** A header as JSON text: names may repeat, `__metadata__` may be anything, the top level may not be an object. */
const headerText = fc.oneof(
  fc.array(
    fc.tuple(
      fc.oneof(fc.constantFrom("a", "b", "__metadata__", "__proto__"), hostile),
      fc.oneof(
        entryText,
        fc.jsonValue({ maxDepth: 1 }).map((v) => JSON.stringify(v)),
        fc.dictionary(hostile, fc.oneof(fc.string({ maxLength: 3 }), fc.integer()), { maxKeys: 2 })
          .map((v) => JSON.stringify(v)),
      ),
    ),
    { maxLength: 4 },
  ).map((kv) => `{${kv.map(([k, v]) => `${JSON.stringify(k)}:${v}`).join(",")}}`),
  fc.jsonValue({ maxDepth: 2 }).map((v) => JSON.stringify(v)),
  // Not JSON at all, with raw line breaks and controls (which V8's JSON.parse messages quote).
  fc.oneof(hostile, fc.string({ maxLength: 40, unit: "binary" })),
);

Deno.test("fuzz: safetensors header texts (duplicates, non-objects, bad __metadata__) parse consistently or fail", () => {
  fc.assert(
    fc.property(headerText, fc.nat({ max: 32 }), (json, dataBytes) => {
      const b = withHeader(json, dataBytes);
      parsesOrNames(() => assertConsistent(parseSafetensors(b, FILE)), SafetensorsError, FILE);
    }),
    { numRuns: 1500 },
  );
});

Deno.test("fuzz: mutated safetensors header lengths fail naming the file, or parse consistently", () => {
  const json = JSON.stringify({ w: { dtype: "U8", shape: [3], data_offsets: [0, 3] } });
  const lengths = fc.oneof(
    fc.bigInt({ min: 0n, max: BigInt(json.length + 8) }),
    fc.constantFrom(
      2n ** 32n,
      2n ** 53n - 1n,
      2n ** 53n + 1n,
      2n ** 63n,
      2n ** 64n - 1n,
      100n * 2n ** 20n + 1n,
    ),
    fc.bigInt({ min: 0n, max: 2n ** 64n - 1n }),
  );
  fc.assert(
    fc.property(lengths, fc.nat({ max: 8 }), (len, pad) => {
      const b = withHeader(json + " ".repeat(pad), 3, len);
      parsesOrNames(() => assertConsistent(parseSafetensors(b, FILE)), SafetensorsError, FILE);
      if (len > BigInt(b.length - 8)) {
        // A length past the end is reported exactly as the file holds it (not rounded to a double).
        assert.throws(() => parseSafetensors(b, FILE), (e: Error) => e.message.includes(String(len)));
      }
    }),
    { numRuns: 300 },
  );
});

/** A valid record of each kind. */
const message = (role: string) =>
  fc.record({ role: fc.constant(role), content: fc.string({ maxLength: 20, unit: "binary" }) });
const validRecord: fc.Arbitrary<DataRecord> = fc.oneof(
  fc.record({
    kind: fc.constant("conversation" as const),
    id: fc.string({ maxLength: 6 }),
    conversations: fc.tuple(message("user"), message("assistant")).map((m) => [...m]),
  }),
  fc.record({ kind: fc.constant("text" as const), id: fc.string({ maxLength: 6 }), text: fc.string() }),
  fc.integer({ min: 1, max: 6 }).chain((n) =>
    fc.record({
      kind: fc.constant("tokens" as const),
      id: fc.string({ maxLength: 6 }),
      inputIds: fc.array(fc.nat({ max: 1000 }), { minLength: n, maxLength: n }),
      lossMask: fc.array(fc.constantFrom(0, 1), { minLength: n, maxLength: n }),
    })
  ),
);

Deno.test("fuzz: valid records round-trip through recordToJson and parseRecord", () => {
  fc.assert(
    fc.property(validRecord, (rec) => {
      const back = parseRecord({
        value: JSON.parse(JSON.stringify(recordToJson(rec))),
        source: "f:1",
        index: 0,
      });
      // (via JSON: fast-check's records may have a null prototype)
      assert.deepEqual(
        JSON.parse(JSON.stringify(recordToJson(back))),
        JSON.parse(JSON.stringify(recordToJson(rec))),
      );
    }),
    { numRuns: 500 },
  );
});

Deno.test("fuzz: arbitrary JSON values as records parse or fail with one line naming the source", () => {
  const source = "data.jsonl:7";
  const recordish = fc.oneof(
    fc.jsonValue({ maxDepth: 3, stringUnit: "binary" }),
    fc.record({
      conversations: fc.array(fc.record({
        role: fc.oneof(fc.constantFrom("user", "assistant", "human", "gpt", "system"), hostile, fc.integer()),
        content: fc.oneof(hostile, fc.jsonValue({ maxDepth: 1 })),
      }, { requiredKeys: [] })),
    }),
    fc.dictionary(hostile, fc.jsonValue({ maxDepth: 1 }), { maxKeys: 3 }),
    fc.record({
      input_ids: fc.jsonValue({ maxDepth: 1, stringUnit: "binary" }),
      loss_mask: fc.jsonValue({ maxDepth: 1, stringUnit: "binary" }),
    }),
    fc.record({
      text: fc.jsonValue({ maxDepth: 1, stringUnit: "binary" }),
      tools: fc.jsonValue({ maxDepth: 1, stringUnit: "binary" }),
    }),
  );
  fc.assert(
    fc.property(recordish, (value) => {
      parsesOrNames(() => parseRecord({ value, source, index: 6 }), DataError, source);
    }),
    { numRuns: 1500 },
  );
});

Deno.test("fuzz: valid records written as jsonl (CRLF, BOM, blank lines) read back exactly", async () => {
  const dir = await Deno.makeTempDir({ prefix: "eaglet-fuzz-" });
  try {
    const path = join(dir, "data.jsonl");
    await fc.assert(
      fc.asyncProperty(
        fc.array(validRecord, { minLength: 1, maxLength: 5 }),
        fc.constantFrom("\n", "\r\n"),
        fc.boolean(),
        fc.boolean(),
        async (recs, eol, bom, blank) => {
          const lines = recs.map((r) => JSON.stringify(recordToJson(r)));
          const text = (bom ? "\ufeff" : "") + lines.join(blank ? eol + eol : eol) + eol;
          await Deno.writeTextFile(path, text);
          const back: DataRecord[] = [];
          for await (const raw of readRecords(path)) back.push(parseRecord(raw));
          assert.deepEqual(
            back.map((r) => JSON.stringify(recordToJson(r))),
            recs.map((r) => JSON.stringify(recordToJson(r))),
          );
        },
      ),
      { numRuns: 150 },
    );
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("fuzz: jsonl files of arbitrary lines read or fail naming the file and line", async () => {
  const dir = await Deno.makeTempDir({ prefix: "eaglet-fuzz-" });
  try {
    const path = join(dir, "data.jsonl");
    const line = fc.oneof(
      fc.jsonValue({ maxDepth: 2, stringUnit: "binary" }).map((v) => JSON.stringify(v)),
      fc.string({ maxLength: 20, unit: "binary" }),
      fc.constantFrom("", "\r", "\ufeff{}", '{"a":', "[1,2", "1e999", '{"input_ids":[1],"loss_mask":[1]}'),
      // Huge, rounded and non-integer numbers where integers belong; unknown roles; missing fields.
      fc.tuple(
        fc.constantFrom("1e400", "-1e400", "9007199254740993", "1.5", "-1", "2", "1.0", "-0", '"1"', "true"),
        fc.constantFrom("1", "0", "1e400", "2", "0.5", "true"),
      ).map(([id, m]) => `{"input_ids":[${id}],"loss_mask":[${m}]}`),
      fc.tuple(hostile, hostile).map(([role, content]) =>
        `{"conversations":[{"role":${JSON.stringify(role)},"content":${JSON.stringify(content)}}]}`
      ),
      hostile,
    );
    await fc.assert(
      fc.asyncProperty(
        fc.array(line, { maxLength: 6 }),
        fc.constantFrom("\n", "\r\n"),
        async (lines, eol) => {
          await Deno.writeTextFile(path, lines.join(eol));
          try {
            for await (const raw of readRecords(path)) {
              assert.ok(raw.source.startsWith(path), raw.source);
              parsesOrNames(() => parseRecord(raw), DataError, path);
            }
          } catch (e) {
            assert.ok(e instanceof DataError, `${(e as Error).name}: ${(e as Error).message}`);
            assert.ok(e.message.includes(path), e.message);
            assert.doesNotMatch(e.message, BREAKS, `one line: ${JSON.stringify(e.message)}`);
            assert.match(e.message, /:\d+/, `names the line: ${e.message}`);
          }
        },
      ),
      { numRuns: 300 },
    );
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});
