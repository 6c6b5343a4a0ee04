import assert from "node:assert/strict";
import { join } from "node:path";
import { AtomicFile, writeDirAtomic, writeFileAtomic, writeJsonAtomic } from "../../lib/io/atomic.ts";

async function withTempDir(fn: (dir: string) => Promise<void>): Promise<void> {
  const dir = await Deno.makeTempDir({ prefix: "eaglet-atomic-" });
  try {
    await fn(dir);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
}

const list = (dir: string) => [...Deno.readDirSync(dir)].map((e) => e.name).sort();

Deno.test("atomic: a file appears under its name only when committed", async () => {
  await withTempDir(async (dir) => {
    const path = join(dir, "sub", "out.bin");
    const f = await AtomicFile.create(path);
    await f.write(new Uint8Array([1, 2, 3]));
    assert.deepEqual(list(join(dir, "sub")).length, 1);
    assert.throws(() => Deno.statSync(path), Deno.errors.NotFound);
    await f.write(new Uint8Array([4]));
    await f.commit();
    assert.deepEqual(Deno.readFileSync(path), new Uint8Array([1, 2, 3, 4]));
    assert.deepEqual(list(join(dir, "sub")), ["out.bin"]);
    await assert.rejects(() => f.commit(), /already finished/);

    // Replacing keeps the old content until the new one is complete; abort leaves it untouched.
    const g = await AtomicFile.create(path);
    await g.write(new Uint8Array([9]));
    await g.abort();
    assert.deepEqual(Deno.readFileSync(path), new Uint8Array([1, 2, 3, 4]));
    assert.deepEqual(list(join(dir, "sub")), ["out.bin"]);
    await writeFileAtomic(path, "text");
    assert.equal(Deno.readTextFileSync(path), "text");
    await writeJsonAtomic(join(dir, "a.json"), { x: [1] });
    assert.equal(Deno.readTextFileSync(join(dir, "a.json")), '{\n  "x": [\n    1\n  ]\n}\n');
  });
});

Deno.test("atomic: a directory is built aside and renamed; failures leave nothing", async () => {
  await withTempDir(async (dir) => {
    const target = join(dir, "model");
    await assert.rejects(
      () =>
        writeDirAtomic(target, async (tmp) => {
          await writeFileAtomic(join(tmp, "config.json"), "{}");
          throw new Error("boom");
        }),
      /boom/,
    );
    assert.deepEqual(list(dir), []);
    const got = await writeDirAtomic(target, async (tmp) => {
      await writeFileAtomic(join(tmp, "config.json"), "{}");
      return 7;
    });
    assert.equal(got, 7);
    assert.deepEqual(list(target), ["config.json"]);
    await assert.rejects(() => writeDirAtomic(target, async () => {}), Deno.errors.AlreadyExists);
    await writeDirAtomic(target, (tmp) => writeFileAtomic(join(tmp, "new.json"), "[]"), { overwrite: true });
    assert.deepEqual(list(target), ["new.json"]);
    assert.deepEqual(list(dir), ["model"]);
  });
});
