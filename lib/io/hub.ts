/**
 * Models (and dataset files) given as a local directory or as a Hugging Face repo id (`owner/name`, optional
 * `@revision`).
 *
 * Files are fetched from `${endpoint}/${repo}/resolve/${revision}/${file}` (datasets:
 * `${endpoint}/datasets/${repo}/resolve/${revision}/${file}`) into a cache laid out like the hub's:
 * `${cacheDir}/models--owner--name/snapshots/${revision}/${file}`. Each download goes to `${file}.incomplete`
 * and is renamed into place only when its size matches what the server announced (`x-linked-size` of an LFS
 * redirect, `Content-Range`, or `Content-Length`); an interrupted download is resumed with an HTTP `Range`
 * request (guarded by `If-Range` with the file's ETag, so a file that changed upstream restarts from zero).
 *
 * A branch revision such as `main` is downloaded once: when a snapshot is complete a manifest
 * (`.eaglet-snapshot.json`) is written and later runs use the cache without touching the network. Delete the
 * snapshot directory (or pass `refresh`) to fetch again. An existing huggingface_hub cache
 * (`~/.cache/huggingface/hub`) can be given as `hfCacheDirs` and is used read-only when it holds a complete
 * snapshot.
 *
 * This module never reads environment variables; tasks call {@link hubOptionsFromEnv}.
 */
import { dirname, join } from "node:path";
import { pathExists, removeIfExists, writeJsonAtomic } from "./atomic.ts";
import { SAFETENSORS_INDEX, SAFETENSORS_SINGLE } from "./safetensors.ts";

/** The public hub. */
export const DEFAULT_ENDPOINT = "https://huggingface.co";

/** Model files fetched when present, besides config.json and the weights. */
export const OPTIONAL_MODEL_FILES = [
  "generation_config.json",
  "tokenizer.json",
  "tokenizer_config.json",
  "special_tokens_map.json",
  "chat_template.jinja",
];

/** Name of the manifest written into a snapshot directory once every file of a model is there. */
export const SNAPSHOT_MANIFEST = ".eaglet-snapshot.json";

/** Progress of one file download. */
export interface DownloadProgress {
  /** Hub repository id, "owner/name". */
  repo: string;
  /** Path of the file inside the repository. */
  file: string;
  /** Bytes on disk so far (including a resumed prefix). */
  received: number;
  /** Expected size, when the server announced one. */
  total: number | null;
}

/** Where and how to fetch. */
export interface HubOptions {
  /** Cache root (the task's default: `~/.cache/eaglet/hub`, see {@link hubOptionsFromEnv}). */
  cacheDir: string;
  /** Hub base URL, default {@link DEFAULT_ENDPOINT}. */
  endpoint?: string;
  /** Access token for gated or private repos (sent as `Authorization: Bearer`, never to another host). */
  token?: string;
  /** Branch, tag or commit; default `main` (or the `@revision` of the id). */
  revision?: string;
  /** Use only what is cached; never touch the network. */
  offline?: boolean;
  /** Ignore a complete cached snapshot and check every file again with the server. */
  refresh?: boolean;
  /** huggingface_hub cache roots to look in (read-only) before downloading. */
  hfCacheDirs?: string[];
  /** Called as bytes arrive. */
  onProgress?: (p: DownloadProgress) => void;
  /** The fetch to use (tests inject one; default: global fetch). */
  fetch?: typeof fetch;
}

/** A repo type: its URL and cache prefix. */
export type RepoType = "model" | "dataset";

/** A download or resolution failure; the message is one line naming the repo, file and endpoint. */
export class HubError extends Error {
  override name = "HubError";
}

const REPO_ID = /^[A-Za-z0-9][A-Za-z0-9_.-]*\/[A-Za-z0-9][A-Za-z0-9_.-]*$/;

/** Splits `owner/name@revision` (the revision is optional). Returns null when `spec` is not a repo id. */
export function parseRepoId(spec: string): { repo: string; revision?: string } | null {
  const at = spec.indexOf("@");
  const repo = at < 0 ? spec : spec.slice(0, at);
  const revision = at < 0 ? undefined : spec.slice(at + 1);
  if (!REPO_ID.test(repo) || repo.includes("..") || revision === "") return null;
  return revision === undefined ? { repo } : { repo, revision };
}

/** The download URL of `file` in `repo` at `revision`. */
export function hubFileUrl(
  repo: string,
  file: string,
  opts: { endpoint?: string; revision?: string; repoType?: RepoType } = {},
): string {
  const base = (opts.endpoint ?? DEFAULT_ENDPOINT).replace(/\/+$/, "");
  const prefix = opts.repoType === "dataset" ? "datasets/" : "";
  const path = file.split("/").map(encodeURIComponent).join("/");
  return `${base}/${prefix}${repo}/resolve/${encodeURIComponent(opts.revision ?? "main")}/${path}`;
}

/** The cache directory of one snapshot: `${cacheDir}/models--owner--name/snapshots/${revision}`. */
export function snapshotDir(
  cacheDir: string,
  repo: string,
  revision: string,
  repoType: RepoType = "model",
): string {
  return join(
    cacheDir,
    `${repoType}s--${repo.replace("/", "--")}`,
    "snapshots",
    encodeURIComponent(revision),
  );
}

/**
 * Hub options from environment variables (tasks pass `Deno.env.toObject()`): `HF_ENDPOINT`, `HF_TOKEN` (or
 * `HUGGING_FACE_HUB_TOKEN`), `HF_HUB_OFFLINE=1`; cache `EAGLET_CACHE/hub`, else `XDG_CACHE_HOME/eaglet/hub`,
 * else `~/.cache/eaglet/hub`; huggingface_hub's cache (`HF_HUB_CACHE`, else `HF_HOME/hub`, else
 * `~/.cache/huggingface/hub`) is searched read-only.
 */
export function hubOptionsFromEnv(env: Record<string, string | undefined>): HubOptions {
  const home = env.HOME ?? env.USERPROFILE ?? ".";
  const cacheDir = env.EAGLET_CACHE
    ? join(env.EAGLET_CACHE, "hub")
    : join(env.XDG_CACHE_HOME ?? join(home, ".cache"), "eaglet", "hub");
  const hfCache = env.HF_HUB_CACHE ??
    (env.HF_HOME ? join(env.HF_HOME, "hub") : join(home, ".cache", "huggingface", "hub"));
  const truthy = (v: string | undefined) => v !== undefined && /^(1|true|yes|on)$/i.test(v);
  return {
    cacheDir,
    endpoint: env.HF_ENDPOINT || DEFAULT_ENDPOINT,
    token: env.HF_TOKEN || env.HUGGING_FACE_HUB_TOKEN || undefined,
    offline: truthy(env.HF_HUB_OFFLINE),
    hfCacheDirs: [hfCache],
  };
}

async function fileSize(path: string): Promise<number> {
  try {
    return (await Deno.stat(path)).size;
  } catch (e) {
    if (e instanceof Deno.errors.NotFound) return 0;
    throw e;
  }
}

/** The request's outcome before the body is read: the final response and the size announced on the way. */
interface Opened {
  response: Response;
  /** `x-linked-size` seen on any hop (LFS files), else null. */
  linkedSize: number | null;
  /** ETag of the file (`x-linked-etag` or `etag`), else null. */
  etag: string | null;
}

/**
 * GET `url`, following redirects by hand so that (a) the hub's `x-linked-size` / `x-linked-etag` on the
 * redirect to the storage host are seen and (b) the token is not sent to another host.
 */
async function open(
  url: string,
  headers: Record<string, string>,
  token: string | undefined,
  doFetch: typeof fetch,
  what: () => string,
): Promise<Opened> {
  let linkedSize: number | null = null;
  let etag: string | null = null;
  const origin = new URL(url).origin;
  for (let hop = 0; hop < 10; hop++) {
    const h = new Headers(headers);
    if (token && new URL(url).origin === origin) h.set("authorization", `Bearer ${token}`);
    let response: Response;
    try {
      response = await doFetch(url, { headers: h, redirect: "manual" });
    } catch (e) {
      const reason = String((e as Error).message ?? e).replace(/\s+/g, " ");
      throw new HubError(
        `${what()}: cannot reach ${new URL(url).origin} (${reason}); offline? pass a local directory`,
      );
    }
    const ls = response.headers.get("x-linked-size");
    if (ls !== null && /^\d+$/.test(ls)) linkedSize = Number(ls);
    etag = response.headers.get("x-linked-etag") ?? etag ?? response.headers.get("etag");
    const location = response.headers.get("location");
    if (response.status >= 300 && response.status < 400 && location) {
      await response.body?.cancel();
      url = new URL(location, url).href;
      continue;
    }
    return { response, linkedSize, etag };
  }
  throw new HubError(`${what()}: too many redirects`);
}

/**
 * Downloads `url` to `dest` (resuming `${dest}.incomplete` when present), checks the size and renames into
 * place. Returns false when the server says 404.
 */
async function download(
  url: string,
  dest: string,
  ctx: { repo: string; file: string; opts: HubOptions; what: () => string },
): Promise<boolean> {
  const { opts, what } = ctx;
  const doFetch = opts.fetch ?? fetch;
  const partial = `${dest}.incomplete`;
  const etagFile = `${dest}.incomplete.etag`;
  await Deno.mkdir(dirname(dest), { recursive: true });
  const have = await fileSize(partial);
  const savedEtag = have > 0 ? await Deno.readTextFile(etagFile).catch(() => null) : null;
  const headers: Record<string, string> = {};
  if (have > 0) {
    headers.range = `bytes=${have}-`;
    if (savedEtag) headers["if-range"] = savedEtag;
  }
  const { response, linkedSize, etag } = await open(url, headers, opts.token, doFetch, what);
  const status = response.status;
  if (status === 404) {
    await response.body?.cancel();
    return false;
  }
  if (status === 401 || status === 403) {
    await response.body?.cancel();
    throw new HubError(
      `${what()}: access denied (HTTP ${status}); the repo may be gated or private: set HF_TOKEN`,
    );
  }
  if (status === 416 && have > 0) {
    // The partial file is at least as long as the file: it is stale or complete; start again.
    await response.body?.cancel();
    await removeIfExists(partial);
    await removeIfExists(etagFile);
    return download(url, dest, ctx);
  }
  if (status !== 200 && status !== 206) {
    await response.body?.cancel();
    throw new HubError(`${what()}: HTTP ${status} ${response.statusText}`);
  }
  let start = 0;
  let total: number | null = linkedSize;
  const length = response.headers.get("content-length");
  if (status === 206) {
    const m = /^bytes (\d+)-(\d+)\/(\d+|\*)$/.exec(response.headers.get("content-range") ?? "");
    if (!m || Number(m[1]) !== have) {
      await response.body?.cancel();
      throw new HubError(
        `${what()}: the server answered a resume from byte ${have} with a wrong Content-Range`,
      );
    }
    start = have;
    if (m[3] !== "*") total ??= Number(m[3]);
  } else if (length !== null) {
    total ??= Number(length);
  }
  if (start === 0) await Deno.writeTextFile(etagFile, etag ?? "");
  if (!response.body) throw new HubError(`${what()}: empty response`);
  const f = await Deno.open(partial, { write: true, create: true, truncate: start === 0, append: start > 0 });
  let received = start;
  try {
    for await (const chunk of response.body) {
      let done = 0;
      while (done < chunk.byteLength) done += await f.write(chunk.subarray(done));
      received += chunk.byteLength;
      opts.onProgress?.({ repo: ctx.repo, file: ctx.file, received, total });
    }
  } catch (e) {
    throw new HubError(
      `${what()}: download interrupted after ${received}${total === null ? "" : ` of ${total}`} bytes (${
        (e as Error).message
      }); run again to resume`,
    );
  } finally {
    f.close();
  }
  if (total !== null && received !== total) {
    if (received > total) {
      await removeIfExists(partial);
      await removeIfExists(etagFile);
    }
    throw new HubError(
      `${what()}: got ${received} bytes but the server announced ${total}${
        received < total ? "; run again to resume" : ""
      }`,
    );
  }
  await Deno.rename(partial, dest);
  await removeIfExists(etagFile);
  return true;
}

/**
 * Returns the local path of `file` in `repo`, downloading it into the cache if it is not there. With
 * `optional`, a file the server does not have (404) gives null instead of an error. Works for datasets with
 * `repoType: "dataset"` (e.g. `data/train-00000-of-00001.parquet`).
 */
export async function resolveHubFile(
  repo: string,
  file: string,
  opts: HubOptions & { repoType?: RepoType; optional?: boolean },
): Promise<string | null> {
  if (!parseRepoId(repo)) {
    throw new HubError(`${JSON.stringify(repo)} is not a Hugging Face repo id (owner/name)`);
  }
  if (file.split("/").some((part) => part === "" || part === "." || part === "..")) {
    throw new HubError(`${repo}: ${JSON.stringify(file)} is not a file path inside a repo`);
  }
  const revision = opts.revision ?? "main";
  const endpoint = opts.endpoint ?? DEFAULT_ENDPOINT;
  const repoType = opts.repoType ?? "model";
  const dest = join(snapshotDir(opts.cacheDir, repo, revision, repoType), file);
  if (!opts.refresh && await pathExists(dest)) return dest;
  const url = hubFileUrl(repo, file, { endpoint, revision, repoType });
  const what = () =>
    `${repoType === "dataset" ? "dataset " : ""}${repo}@${revision}: ${file} from ${endpoint}`;
  if (opts.offline) {
    if (opts.optional) return null;
    throw new HubError(
      `${what()}: not in the cache ${opts.cacheDir} and offline mode is on (HF_HUB_OFFLINE)`,
    );
  }
  if (await download(url, dest, { repo, file, opts, what })) return dest;
  if (opts.optional) return null;
  throw new HubError(`${what()}: not found (HTTP 404); check the repo id, revision and file name`);
}

/** The manifest of a complete snapshot. */
interface SnapshotManifest {
  repo: string;
  revision: string;
  files: string[];
  absent: string[];
}

/** The weight files of a model directory: the index and its shards, or model.safetensors. */
async function weightFiles(dir: string, what: string): Promise<string[] | null> {
  const indexPath = join(dir, SAFETENSORS_INDEX);
  if (await pathExists(indexPath)) {
    let map: unknown;
    try {
      map = JSON.parse(await Deno.readTextFile(indexPath)).weight_map;
    } catch (e) {
      throw new HubError(`${what}: ${SAFETENSORS_INDEX} is not valid JSON (${(e as Error).message})`);
    }
    if (map === null || typeof map !== "object") {
      throw new HubError(`${what}: ${SAFETENSORS_INDEX} has no weight_map`);
    }
    return [SAFETENSORS_INDEX, ...new Set(Object.values(map as Record<string, string>))];
  }
  return (await pathExists(join(dir, SAFETENSORS_SINGLE))) ? [SAFETENSORS_SINGLE] : null;
}

/** A complete huggingface_hub snapshot of `repo` at `revision` in one of `roots`, or null. */
async function findInHfCache(roots: string[], repo: string, revision: string): Promise<string | null> {
  for (const root of roots) {
    const base = join(root, `models--${repo.replace("/", "--")}`);
    const commit = /^[0-9a-f]{40}$/.test(revision)
      ? revision
      : (await Deno.readTextFile(join(base, "refs", revision)).catch(() => "")).trim();
    if (!commit) continue;
    const dir = join(base, "snapshots", commit);
    if (!(await pathExists(join(dir, "config.json")))) continue;
    const weights = await weightFiles(dir, repo).catch(() => null);
    if (!weights) continue;
    const present = await Promise.all(weights.map((f) => pathExists(join(dir, f))));
    if (present.every(Boolean)) return dir;
  }
  return null;
}

/**
 * Downloads a model repo into the cache and returns its snapshot directory: config.json, the tokenizer and
 * generation files that exist ({@link OPTIONAL_MODEL_FILES}), and the safetensors weights (the index and every
 * shard it lists, or model.safetensors).
 */
export async function downloadModel(repo: string, opts: HubOptions): Promise<string> {
  const revision = opts.revision ?? "main";
  const endpoint = opts.endpoint ?? DEFAULT_ENDPOINT;
  const dir = snapshotDir(opts.cacheDir, repo, revision);
  const manifestPath = join(dir, SNAPSHOT_MANIFEST);
  if (!opts.refresh && await pathExists(manifestPath)) return dir;
  if (!opts.refresh && opts.hfCacheDirs?.length) {
    const found = await findInHfCache(opts.hfCacheDirs, repo, revision);
    if (found) return found;
  }
  const get = (file: string, optional: boolean) =>
    resolveHubFile(repo, file, { ...opts, revision, optional });
  const files = ["config.json"];
  const absent: string[] = [];
  await get("config.json", false);
  for (const f of OPTIONAL_MODEL_FILES) ((await get(f, true)) ? files : absent).push(f);
  if (await get(SAFETENSORS_INDEX, true)) {
    const shards = (await weightFiles(dir, `${repo}@${revision}`))!.slice(1);
    for (const shard of shards) await get(shard, false);
    files.push(SAFETENSORS_INDEX, ...shards);
  } else if (await get(SAFETENSORS_SINGLE, true)) {
    files.push(SAFETENSORS_SINGLE);
  } else {
    throw new HubError(
      `${repo}@${revision} (${endpoint}): neither ${SAFETENSORS_INDEX} nor ${SAFETENSORS_SINGLE} found; ` +
        `only safetensors checkpoints are supported`,
    );
  }
  const manifest: SnapshotManifest = { repo, revision, files, absent };
  await writeJsonAtomic(manifestPath, manifest);
  return dir;
}

/**
 * A model given as a local directory (returned as is) or as a repo id `owner/name[@revision]` (downloaded,
 * see {@link downloadModel}). An existing local path always wins over a repo id of the same spelling.
 */
export async function resolveModelPath(spec: string, opts: HubOptions): Promise<string> {
  try {
    const st = await Deno.stat(spec);
    if (!st.isDirectory) throw new HubError(`${spec} is a file; give the model directory or a repo id`);
    return spec;
  } catch (e) {
    if (!(e instanceof Deno.errors.NotFound)) throw e;
  }
  const id = parseRepoId(spec);
  if (!id) {
    throw new HubError(`${spec}: no such directory, and not a Hugging Face repo id (owner/name[@revision])`);
  }
  return downloadModel(id.repo, { ...opts, revision: id.revision ?? opts.revision });
}

/**
 * Every file path of `repo` at the revision, from the hub API
 * (`${endpoint}/api/{models|datasets}/${repo}/revision/${revision}`, its `siblings[].rfilename`). Needs the
 * network; for a dataset pass `repoType: "dataset"`.
 */
export async function listHubFiles(
  repo: string,
  opts: Omit<HubOptions, "cacheDir"> & { repoType?: RepoType },
): Promise<string[]> {
  if (!parseRepoId(repo)) {
    throw new HubError(`${JSON.stringify(repo)} is not a Hugging Face repo id (owner/name)`);
  }
  const revision = opts.revision ?? "main";
  const endpoint = (opts.endpoint ?? DEFAULT_ENDPOINT).replace(/\/+$/, "");
  const kind = opts.repoType === "dataset" ? "datasets" : "models";
  const url = `${endpoint}/api/${kind}/${repo}/revision/${encodeURIComponent(revision)}`;
  const what = () =>
    `${opts.repoType === "dataset" ? "dataset " : ""}${repo}@${revision}: file list from ${endpoint}`;
  if (opts.offline) {
    throw new HubError(`${what()}: needs the network and offline mode is on (HF_HUB_OFFLINE)`);
  }
  const { response } = await open(url, {}, opts.token, opts.fetch ?? fetch, what);
  if (response.status !== 200) {
    await response.body?.cancel();
    const hint = response.status === 401 || response.status === 403
      ? "; the repo may be gated or private: set HF_TOKEN"
      : response.status === 404
      ? "; check the repo id and revision"
      : "";
    throw new HubError(`${what()}: HTTP ${response.status}${hint}`);
  }
  let body: { siblings?: Array<{ rfilename?: unknown }> };
  try {
    body = await response.json();
  } catch (e) {
    throw new HubError(`${what()}: not JSON (${(e as Error).message})`);
  }
  if (!Array.isArray(body.siblings)) throw new HubError(`${what()}: the answer has no siblings list`);
  return body.siblings.map((s) => s.rfilename).filter((f): f is string => typeof f === "string");
}
