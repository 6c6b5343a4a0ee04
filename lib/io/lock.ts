/**
 * An exclusive lock per output directory: `{dir}/.eaglet.lock` holds the owner (PID, host, start time, what it
 * does). It is created whole under a temporary name and hard-linked into place (`link` fails when the name
 * exists, atomically, across processes), so a second writer fails at once with the holder named, and a
 * reader never sees a half-written lock. A lock left by a dead process (same host, PID gone) is taken over
 * with a note. In a data-parallel run one lock covers the run: rank 0 takes it.
 */
import { hostname } from "node:os";
import { join } from "node:path";
import { removeIfExists, tempSibling } from "./atomic.ts";

/** The lock file's name inside the locked directory. */
export const LOCK_FILE = ".eaglet.lock";

/** The directory is held by another live process; the message names the directory and the holder. */
export class LockError extends Error {
  /** Error name shown in stack traces and messages. */
  override name = "LockError";
}

/** The owner recorded in a lock file. */
export interface LockOwner {
  /** Process id. */
  pid: number;
  /** Host name. */
  host: string;
  /** When the lock was taken (ISO 8601). */
  started: string;
  /** What the holder does (the task name). */
  what: string;
}

/** A held lock; {@link DirLock.release} gives it back (and removes the directory if the run left it empty). */
export interface DirLock {
  /** The locked directory. */
  dir: string;
  /** The lock file. */
  path: string;
  /** Removes the lock file (when it is still ours); removes `dir` when it is empty and this lock created it. */
  release(): Promise<void>;
}

/**
 * Whether process `pid` runs on this host. Linux: /proc/PID exists; elsewhere (no /proc) the process is
 * assumed alive, so a lock is never stolen from a live run.
 */
export function processAlive(pid: number): boolean {
  if (!Number.isSafeInteger(pid) || pid <= 0) return false;
  if (pid === Deno.pid) return true;
  try {
    Deno.statSync("/proc/self");
  } catch {
    return true; // no procfs: cannot tell
  }
  try {
    Deno.statSync(`/proc/${pid}`);
    return true;
  } catch {
    return false;
  }
}

function describe(o: LockOwner): string {
  return `PID ${o.pid} on ${o.host}, started ${o.started} (${o.what})`;
}

async function readOwner(path: string): Promise<LockOwner | null> {
  try {
    const o = JSON.parse(await Deno.readTextFile(path));
    return typeof o?.pid === "number" && typeof o?.host === "string" ? o as LockOwner : null;
  } catch (e) {
    if (e instanceof Deno.errors.NotFound) return null;
    if (e instanceof SyntaxError) return { pid: -1, host: "?", started: "?", what: "unreadable lock" };
    throw new Error(`${path}: ${(e as Error).message}`);
  }
}

/** Links a complete lock file for `owner` to `path`; false when `path` exists. */
async function tryLink(path: string, owner: LockOwner): Promise<boolean> {
  const tmp = tempSibling(path);
  await Deno.writeTextFile(tmp, JSON.stringify(owner) + "\n", { createNew: true });
  try {
    await Deno.link(tmp, path);
    return true;
  } catch (e) {
    if (e instanceof Deno.errors.AlreadyExists) return false;
    throw new Error(`${path}: ${(e as Error).message}`);
  } finally {
    await removeIfExists(tmp);
  }
}

/** Moves a stale lock out of the way; false when another process took it over first. */
async function takeOver(path: string, stale: LockOwner): Promise<boolean> {
  const aside = tempSibling(path);
  try {
    await Deno.rename(path, aside);
  } catch (e) {
    if (e instanceof Deno.errors.NotFound) return true; // removed meanwhile: retry the link
    throw new Error(`${path}: ${(e as Error).message}`);
  }
  const moved = await readOwner(aside);
  if (moved && (moved.pid !== stale.pid || moved.started !== stale.started)) {
    await Deno.link(aside, path).catch(() => {}); // a live lock taken meanwhile: put it back
    await removeIfExists(aside);
    return false;
  }
  await removeIfExists(aside);
  return true;
}

async function ensureDir(dir: string, flag: string): Promise<boolean> {
  if (dir.trim() === "") throw new LockError(`${flag} is empty: give the directory to write`);
  try {
    const st = await Deno.stat(dir);
    if (!st.isDirectory) throw new LockError(`${flag} ${dir}: exists and is not a directory`);
    return false;
  } catch (e) {
    if (!(e instanceof Deno.errors.NotFound)) {
      if (e instanceof LockError) throw e;
      throw new LockError(`${flag} ${dir}: ${(e as Error).message}`);
    }
  }
  try {
    await Deno.mkdir(dir, { recursive: true });
  } catch (e) {
    throw new LockError(`${flag} ${dir}: cannot create it: ${(e as Error).message}`);
  }
  return true;
}

/** Options of {@link lockOutputDir}. */
export interface LockOptions {
  /** The setting that names the directory, for errors (default `--output-dir`). */
  flag?: string;
  /** Tells the user about a lock taken over or stale files removed. */
  note?: (m: string) => void;
  /** The lock file's name (default {@link LOCK_FILE}); writers of disjoint parts (shards) use one each. */
  name?: string;
}

/**
 * Takes the exclusive lock of output directory `dir` (created if missing) for task `what`; `flag` names the
 * setting in errors. Fails at once (LockError) when a live process holds it; takes over a lock whose process
 * is gone (same host), telling `note`.
 */
export async function lockOutputDir(
  dir: string,
  what: string,
  opts: LockOptions = {},
): Promise<DirLock> {
  const flag = opts.flag ?? "--output-dir";
  const created = await ensureDir(dir, flag);
  const path = join(dir, opts.name ?? LOCK_FILE);
  const owner: LockOwner = { pid: Deno.pid, host: hostname(), started: new Date().toISOString(), what };
  for (let attempt = 0; attempt < 5; attempt++) {
    if (await tryLink(path, owner)) return held(dir, path, owner, created);
    const holder = await readOwner(path);
    if (!holder) continue; // released meanwhile
    const dead = holder.pid === -1 || (holder.host === owner.host && !processAlive(holder.pid));
    if (!dead) {
      throw new LockError(`${dir} is in use by ${describe(holder)}; lock file ${path}`);
    }
    if (await takeOver(path, holder)) {
      opts.note?.(`${dir}: took over the lock of ${describe(holder)}, which is no longer running`);
    }
  }
  throw new LockError(`${dir}: could not take the lock ${path} (other processes keep taking it)`);
}

function held(dir: string, path: string, owner: LockOwner, created: boolean): DirLock {
  let released = false;
  return {
    dir,
    path,
    async release() {
      if (released) return;
      released = true;
      const now = await readOwner(path).catch(() => null);
      if (now && now.pid === owner.pid && now.started === owner.started) await removeIfExists(path);
      if (created) await Deno.remove(dir).catch(() => {}); // only succeeds when empty
    },
  };
}

/** The temporary names of lib/io/atomic.ts `tempSibling`: `.{name}.tmp-{pid}-{n}-{rand}`. */
const TEMP_NAME = /^\..+\.tmp-(\d+)-\d+-[0-9a-z]+$/;

async function sizeOf(path: string): Promise<number> {
  const st = await Deno.lstat(path);
  if (!st.isDirectory) return st.size;
  let total = 0;
  for await (const e of Deno.readDir(path)) total += await sizeOf(join(path, e.name));
  return total;
}

/**
 * Removes the stale temporary files and directories of lib/io/atomic.ts's naming in `dir` and its
 * subdirectories down to `depth` levels (a checkpoint, a file group): those whose writer's PID is gone, as a `kill -9` mid-save leaves them. Returns how many and their bytes.
 * Call it while holding the directory's lock, so that no live writer of this run's directory is affected.
 */
export async function removeStaleTemps(dir: string, depth = 2): Promise<{ count: number; bytes: number }> {
  let count = 0, bytes = 0;
  let entries: Deno.DirEntry[];
  try {
    entries = await Array.fromAsync(Deno.readDir(dir));
  } catch (e) {
    if (e instanceof Deno.errors.NotFound) return { count, bytes };
    throw new Error(`${dir}: ${(e as Error).message}`);
  }
  for (const e of entries) {
    const m = TEMP_NAME.exec(e.name);
    const path = join(dir, e.name);
    if (!m && e.isDirectory && depth > 1) {
      const sub = await removeStaleTemps(path, depth - 1);
      count += sub.count, bytes += sub.bytes;
    }
    if (!m || processAlive(Number(m[1]))) continue;
    try {
      bytes += await sizeOf(path);
      await removeIfExists(path);
      count++;
    } catch (err) {
      throw new Error(`${path}: cannot remove a stale temporary file: ${(err as Error).message}`);
    }
  }
  return { count, bytes };
}

/**
 * {@link lockOutputDir}, then {@link removeStaleTemps} in the directory, telling `note` what was freed: the
 * start of every task that writes an output directory.
 */
export async function claimOutputDir(
  dir: string,
  what: string,
  opts: LockOptions = {},
): Promise<DirLock> {
  const lock = await lockOutputDir(dir, what, opts);
  try {
    const { count, bytes } = await removeStaleTemps(dir);
    if (count > 0) {
      opts.note?.(`${dir}: removed ${count} stale temporary file(s) of killed runs, ${bytes} bytes freed`);
    }
  } catch (e) {
    await lock.release();
    throw e;
  }
  return lock;
}
