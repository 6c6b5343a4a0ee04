/**
 * lib/io/hub.ts against a local HTTP server that lays files out like the Hugging Face hub:
 * `/{owner}/{name}/resolve/{revision}/{file}` (and `/datasets/...`), with LFS files answered by a redirect
 * carrying `x-linked-size` / `x-linked-etag`, Range and If-Range support, a gated repo, and injectable faults.
 */
import assert from "node:assert/strict";
import { join } from "node:path";
import {
  downloadModel,
  HubError,
  hubFileUrl,
  hubOptionsFromEnv,
  listHubFiles,
  parseRepoId,
  resolveHubFile,
  resolveModelPath,
  SNAPSHOT_MANIFEST,
  snapshotDir,
} from "../../lib/io/hub.ts";
import {
  fromFloat32,
  type RawTensor,
  SafetensorsCheckpoint,
  serializeSafetensors,
  writeShardedSafetensors,
} from "../../lib/io/safetensors.ts";

/** One request as the server saw it. */
interface Seen {
  path: string;
  range: string | null;
  ifRange: string | null;
  auth: string | null;
}

/** A fake hub: `files[repoPath][file]` = bytes; `faults` change the next answer for a file. */
class FakeHub {
  readonly files = new Map<string, Map<string, Uint8Array>>();
  readonly seen: Seen[] = [];
  /** file → how to misbehave on its next full or ranged answer. */
  readonly faults = new Map<string, "truncate" | "lie-linked-size">();
  /** Repos that need `Authorization: Bearer secret`. */
  readonly gated = new Set<string>();
  etags = new Map<string, string>();
  #ac = new AbortController();
  #server: Deno.HttpServer<Deno.NetAddr>;

  constructor() {
    this.#server = Deno.serve(
      { hostname: "127.0.0.1", port: 0, signal: this.#ac.signal, onListen() {} },
      (req) => this.#handle(req),
    );
  }

  get endpoint(): string {
    return `http://127.0.0.1:${this.#server.addr.port}`;
  }

  add(repo: string, file: string, bytes: Uint8Array): void {
    if (!this.files.has(repo)) this.files.set(repo, new Map());
    this.files.get(repo)!.set(file, bytes);
    this.etags.set(`${repo}/${file}`, `"${repo}/${file}/${bytes.byteLength}/${bytes[0] ?? 0}"`);
  }

  async close(): Promise<void> {
    this.#ac.abort();
    await this.#server.finished;
  }

  #handle(req: Request): Response {
    const url = new URL(req.url);
    this.seen.push({
      path: decodeURIComponent(url.pathname),
      range: req.headers.get("range"),
      ifRange: req.headers.get("if-range"),
      auth: req.headers.get("authorization"),
    });
    // LFS storage: /lfs/{repo}/{file}
    const lfs = /^\/lfs\/([^/]+\/[^/]+)\/(.+)$/.exec(url.pathname);
    if (lfs) return this.#serve(lfs[1], decodeURIComponent(lfs[2]), req);
    const api = /^\/api\/(?:models|datasets)\/([^/]+\/[^/]+)\/revision\/([^/]+)$/.exec(url.pathname);
    if (api) {
      const files = this.files.get(api[1]);
      if (!files) return new Response("not found", { status: 404 });
      return Response.json({ id: api[1], siblings: [...files.keys()].map((rfilename) => ({ rfilename })) });
    }
    const m = /^\/(?:datasets\/)?([^/]+\/[^/]+)\/resolve\/([^/]+)\/(.+)$/.exec(url.pathname);
    if (!m) return new Response("bad path", { status: 400 });
    const [, repo, , file] = m;
    const name = decodeURIComponent(file);
    if (this.gated.has(repo) && req.headers.get("authorization") !== "Bearer secret") {
      return new Response("gated", { status: 401 });
    }
    const bytes = this.files.get(repo)?.get(name);
    if (!bytes) return new Response("not found", { status: 404 });
    if (name.endsWith(".safetensors")) {
      const lie = this.faults.get(name) === "lie-linked-size";
      if (lie) this.faults.delete(name);
      return new Response(null, {
        status: 302,
        headers: {
          location: `/lfs/${repo}/${encodeURIComponent(name)}`,
          "x-linked-size": String(bytes.byteLength + (lie ? 16 : 0)),
          "x-linked-etag": this.etags.get(`${repo}/${name}`)!,
        },
      });
    }
    return this.#serve(repo, name, req);
  }

  #serve(repo: string, file: string, req: Request): Response {
    const bytes = this.files.get(repo)?.get(file);
    if (!bytes) return new Response("not found", { status: 404 });
    const etag = this.etags.get(`${repo}/${file}`)!;
    let start = 0;
    const range = /^bytes=(\d+)-$/.exec(req.headers.get("range") ?? "");
    const ifRange = req.headers.get("if-range");
    if (range && (ifRange === null || ifRange === etag)) {
      start = Number(range[1]);
      if (start >= bytes.byteLength) return new Response(null, { status: 416 });
    }
    const body = bytes.slice(start);
    const headers: Record<string, string> = { etag, "content-length": String(body.byteLength) };
    if (start > 0) headers["content-range"] = `bytes ${start}-${bytes.byteLength - 1}/${bytes.byteLength}`;
    const status = start > 0 ? 206 : 200;
    if (this.faults.get(file) === "truncate") {
      this.faults.delete(file);
      // Announce the full length but close the connection half way.
      const half = body.slice(0, body.byteLength >> 1);
      const stream = new ReadableStream<Uint8Array>({
        start(c) {
          c.enqueue(half);
          c.close();
        },
      });
      return new Response(stream, { status, headers });
    }
    return new Response(body, { status, headers });
  }
}

async function withHub(fn: (hub: FakeHub, cacheDir: string) => Promise<void>): Promise<void> {
  const hub = new FakeHub();
  const cacheDir = await Deno.makeTempDir({ prefix: "eaglet-hub-" });
  try {
    await fn(hub, cacheDir);
  } finally {
    await hub.close();
    await Deno.remove(cacheDir, { recursive: true });
  }
}

/** Puts a small sharded model (config, tokenizer files, 3 shards + index) into the fake hub. */
async function addShardedModel(hub: FakeHub, repo: string): Promise<Map<string, RawTensor>> {
  const tensors = new Map<string, RawTensor>();
  for (let i = 0; i < 5; i++) {
    tensors.set(
      `model.layers.${i}.w`,
      fromFloat32(Float32Array.from({ length: 64 }, (_, j) => i * 100 + j), [8, 8]),
    );
  }
  const dir = await Deno.makeTempDir();
  try {
    const written = await writeShardedSafetensors(dir, tensors, { maxShardBytes: 600 });
    for (const f of written) hub.add(repo, f, Deno.readFileSync(join(dir, f)));
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
  const enc = new TextEncoder();
  hub.add(repo, "config.json", enc.encode(JSON.stringify({ architectures: ["LlamaForCausalLM"] })));
  hub.add(repo, "tokenizer.json", enc.encode(JSON.stringify({ model: { type: "BPE" } })));
  hub.add(repo, "tokenizer_config.json", enc.encode("{}"));
  return tensors;
}

Deno.test("hub: URLs, repo ids and environment options", () => {
  assert.equal(
    hubFileUrl("meta-llama/Llama-3.1-8B", "model-00001-of-00004.safetensors", { revision: "main" }),
    "https://huggingface.co/meta-llama/Llama-3.1-8B/resolve/main/model-00001-of-00004.safetensors",
  );
  assert.equal(
    hubFileUrl("HuggingFaceH4/ultrachat_200k", "data/train_sft-00000-of-00003.parquet", {
      endpoint: "http://127.0.0.1:9/",
      repoType: "dataset",
      revision: "refs/convert/parquet",
    }),
    "http://127.0.0.1:9/datasets/HuggingFaceH4/ultrachat_200k/resolve/refs%2Fconvert%2Fparquet/data/train_sft-00000-of-00003.parquet",
  );
  assert.deepEqual(parseRepoId("Qwen/Qwen3-8B"), { repo: "Qwen/Qwen3-8B" });
  assert.deepEqual(parseRepoId("Qwen/Qwen3-8B@v1.0"), { repo: "Qwen/Qwen3-8B", revision: "v1.0" });
  for (const bad of ["Qwen3-8B", "/abs/path", "a/b/c", "./x", "a/..", "a/b@"]) {
    assert.equal(parseRepoId(bad), null, bad);
  }
  const o = hubOptionsFromEnv({
    HOME: "/home/u",
    HF_ENDPOINT: "http://mirror",
    HF_TOKEN: "t",
    HF_HUB_OFFLINE: "1",
  });
  assert.deepEqual(o, {
    cacheDir: "/home/u/.cache/eaglet/hub",
    endpoint: "http://mirror",
    token: "t",
    offline: true,
    hfCacheDirs: ["/home/u/.cache/huggingface/hub"],
  });
  const d = hubOptionsFromEnv({ HOME: "/h", EAGLET_CACHE: "/c", HF_HOME: "/hf" });
  assert.equal(d.cacheDir, "/c/hub");
  assert.equal(d.endpoint, "https://huggingface.co");
  assert.equal(d.offline, false);
  assert.deepEqual(d.hfCacheDirs, ["/hf/hub"]);
});

Deno.test("hub: a sharded model downloads into the cache, then loads with no network", async () => {
  await withHub(async (hub, cacheDir) => {
    const tensors = await addShardedModel(hub, "acme/tiny");
    const progress: number[] = [];
    const opts = {
      cacheDir,
      endpoint: hub.endpoint,
      onProgress: (p: { received: number }) => progress.push(p.received),
    };
    const dir = await resolveModelPath("acme/tiny", opts);
    assert.equal(dir, snapshotDir(cacheDir, "acme/tiny", "main"));
    const names = [...Deno.readDirSync(dir)].map((e) => e.name).sort();
    assert.deepEqual(names, [
      SNAPSHOT_MANIFEST,
      "config.json",
      "model-00001-of-00003.safetensors",
      "model-00002-of-00003.safetensors",
      "model-00003-of-00003.safetensors",
      "model.safetensors.index.json",
      "tokenizer.json",
      "tokenizer_config.json",
    ]);
    for (const f of names.filter((n) => n !== SNAPSHOT_MANIFEST)) {
      assert.deepEqual(Deno.readFileSync(join(dir, f)), hub.files.get("acme/tiny")!.get(f), f);
    }
    assert.ok(progress.length > 0);
    const manifest = JSON.parse(Deno.readTextFileSync(join(dir, SNAPSHOT_MANIFEST)));
    assert.deepEqual(manifest.absent, [
      "generation_config.json",
      "special_tokens_map.json",
      "chat_template.jinja",
    ]);
    const ckpt = await SafetensorsCheckpoint.open(dir);
    try {
      for (const [name, t] of tensors) assert.deepEqual(await ckpt.read(name), t);
    } finally {
      ckpt.close();
    }
    // Shards came through the LFS redirect; the second resolution does not touch the server.
    assert.ok(hub.seen.some((s) => s.path === "/lfs/acme/tiny/model-00002-of-00003.safetensors"));
    const before = hub.seen.length;
    assert.equal(await resolveModelPath("acme/tiny", opts), dir);
    assert.equal(hub.seen.length, before);
    // A local directory is used as is.
    assert.equal(await resolveModelPath(dir, opts), dir);
    await assert.rejects(() => resolveModelPath(join(dir, "config.json"), opts), /is a file/);
    await assert.rejects(
      () => resolveModelPath("./no/such/dir", opts),
      /no such directory, and not a Hugging Face repo id/,
    );
  });
});

Deno.test("hub: an interrupted download is detected, kept, and resumed with a Range request", async () => {
  await withHub(async (hub, cacheDir) => {
    await addShardedModel(hub, "acme/tiny");
    const shard = "model-00002-of-00003.safetensors";
    const full = hub.files.get("acme/tiny")!.get(shard)!;
    hub.faults.set(shard, "truncate");
    const opts = { cacheDir, endpoint: hub.endpoint };
    await assert.rejects(
      () => downloadModel("acme/tiny", opts),
      (e) =>
        e instanceof HubError &&
        e.message.includes(`acme/tiny@main: ${shard} from ${hub.endpoint}: download interrupted after`) &&
        e.message.includes(`of ${full.byteLength} bytes`) && e.message.includes("run again to resume") &&
        !e.message.includes("\n"),
    );
    const dir = snapshotDir(cacheDir, "acme/tiny", "main");
    const partial = Deno.readFileSync(join(dir, `${shard}.incomplete`));
    assert.ok(partial.byteLength > 0 && partial.byteLength < full.byteLength);
    assert.deepEqual(partial, full.slice(0, partial.byteLength));
    assert.ok(!existsSync(join(dir, shard)) && !existsSync(join(dir, SNAPSHOT_MANIFEST)));

    hub.seen.length = 0;
    await downloadModel("acme/tiny", opts);
    assert.deepEqual(Deno.readFileSync(join(dir, shard)), full);
    assert.ok(!existsSync(join(dir, `${shard}.incomplete`)));
    const resumed = hub.seen.find((s) => s.path.endsWith(`/lfs/acme/tiny/${shard}`))!;
    assert.equal(resumed.range, `bytes=${partial.byteLength}-`);
    assert.equal(resumed.ifRange, hub.etags.get(`acme/tiny/${shard}`));
    // Files already complete were not asked for again.
    assert.ok(!hub.seen.some((s) => s.path.endsWith("model-00001-of-00003.safetensors")));
  });
});

Deno.test("hub: a resumed file that changed upstream restarts from zero (If-Range)", async () => {
  await withHub(async (hub, cacheDir) => {
    const old = new Uint8Array(100).fill(1);
    hub.add("acme/data", "data/part.bin", old);
    hub.faults.set("data/part.bin", "truncate");
    const opts = { cacheDir, endpoint: hub.endpoint, repoType: "dataset" as const };
    await assert.rejects(
      () => resolveHubFile("acme/data", "data/part.bin", opts),
      /download interrupted after 50 of 100 bytes/,
    );
    const fresh = Uint8Array.from({ length: 120 }, (_, i) => i);
    hub.add("acme/data", "data/part.bin", fresh);
    const path = await resolveHubFile("acme/data", "data/part.bin", opts);
    assert.equal(path, join(snapshotDir(cacheDir, "acme/data", "main", "dataset"), "data/part.bin"));
    assert.deepEqual(Deno.readFileSync(path!), fresh);
    assert.equal(hub.seen.at(-1)!.path, "/datasets/acme/data/resolve/main/data/part.bin");
    assert.deepEqual(await listHubFiles("acme/data", opts), ["data/part.bin"]);
    assert.equal(hub.seen.at(-1)!.path, "/api/datasets/acme/data/revision/main");
    await assert.rejects(
      () => listHubFiles("acme/none", opts),
      /dataset acme\/none@main: file list from .*HTTP 404; check the repo id/,
    );
  });
});

Deno.test("hub: a response shorter than x-linked-size is rejected and not renamed into place", async () => {
  await withHub(async (hub, cacheDir) => {
    const bytes = serializeSafetensors([["w", fromFloat32(new Float32Array(16), [16])]]);
    hub.add("acme/one", "model.safetensors", bytes);
    hub.faults.set("model.safetensors", "lie-linked-size");
    const opts = { cacheDir, endpoint: hub.endpoint };
    await assert.rejects(
      () => resolveHubFile("acme/one", "model.safetensors", opts),
      new RegExp(`got ${bytes.byteLength} bytes but the server announced ${bytes.byteLength + 16}`),
    );
    const dest = join(snapshotDir(cacheDir, "acme/one", "main"), "model.safetensors");
    assert.ok(!existsSync(dest));
  });
});

Deno.test("hub: gated repos need the token; missing files and repos are clear errors", async () => {
  await withHub(async (hub, cacheDir) => {
    hub.add("acme/gated", "config.json", new TextEncoder().encode("{}"));
    hub.add(
      "acme/gated",
      "model.safetensors",
      serializeSafetensors([["w", fromFloat32(new Float32Array(2), [2])]]),
    );
    hub.gated.add("acme/gated");
    const opts = { cacheDir, endpoint: hub.endpoint };
    await assert.rejects(
      () => downloadModel("acme/gated", opts),
      /acme\/gated@main: config\.json from .*access denied \(HTTP 401\).*HF_TOKEN/,
    );
    const dir = await downloadModel("acme/gated", { ...opts, token: "secret" });
    assert.ok(existsSync(join(dir, "model.safetensors")));
    assert.ok(
      hub.seen.filter((s) => s.path.startsWith("/acme/gated/")).every((s, i) =>
        i === 0 || s.auth === "Bearer secret"
      ),
    );

    await assert.rejects(
      () => downloadModel("acme/missing", opts),
      /acme\/missing@main: config\.json from .*not found \(HTTP 404\)/,
    );
    hub.add("acme/noweights", "config.json", new TextEncoder().encode("{}"));
    await assert.rejects(
      () => downloadModel("acme/noweights", opts),
      /acme\/noweights@main .*neither model\.safetensors\.index\.json nor model\.safetensors found/,
    );
    assert.equal(await resolveHubFile("acme/noweights", "README.md", { ...opts, optional: true }), null);
    await assert.rejects(
      () => resolveHubFile("acme/noweights", "../x", opts),
      /not a file path inside a repo/,
    );
  });
});

Deno.test("hub: offline, a one-line error names the repo and the endpoint", async () => {
  // A port that was just closed: nothing listens there.
  const probe = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const endpoint = `http://127.0.0.1:${(probe.addr as Deno.NetAddr).port}`;
  probe.close();
  const cacheDir = await Deno.makeTempDir({ prefix: "eaglet-hub-" });
  try {
    await assert.rejects(
      () => resolveModelPath("acme/tiny", { cacheDir, endpoint }),
      (e) =>
        e instanceof HubError &&
        e.message.startsWith(`acme/tiny@main: config.json from ${endpoint}: cannot reach ${endpoint}`) &&
        !e.message.includes("\n"),
    );
    await assert.rejects(
      () => downloadModel("acme/tiny", { cacheDir, endpoint, offline: true }),
      /acme\/tiny@main: config\.json .*not in the cache .* offline mode is on/,
    );
  } finally {
    await Deno.remove(cacheDir, { recursive: true });
  }
});

Deno.test("hub: a complete huggingface_hub snapshot is used in place", async () => {
  const root = await Deno.makeTempDir({ prefix: "eaglet-hfcache-" });
  try {
    const commit = "0123456789abcdef0123456789abcdef01234567";
    const base = join(root, "models--acme--cached");
    const snap = join(base, "snapshots", commit);
    Deno.mkdirSync(join(base, "refs"), { recursive: true });
    Deno.mkdirSync(snap, { recursive: true });
    Deno.writeTextFileSync(join(base, "refs", "main"), commit);
    Deno.writeTextFileSync(join(snap, "config.json"), "{}");
    const opts = {
      cacheDir: join(root, "eaglet"),
      endpoint: "http://127.0.0.1:9",
      hfCacheDirs: [root],
      offline: true,
    };
    // Without weights the snapshot is incomplete and not used.
    await assert.rejects(() => downloadModel("acme/cached", opts), /not in the cache/);
    Deno.writeFileSync(join(snap, "model.safetensors"), serializeSafetensors([]));
    assert.equal(await downloadModel("acme/cached", opts), snap);
  } finally {
    await Deno.remove(root, { recursive: true });
  }
});

function existsSync(path: string): boolean {
  try {
    Deno.statSync(path);
    return true;
  } catch {
    return false;
  }
}
