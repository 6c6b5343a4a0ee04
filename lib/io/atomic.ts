/**
 * Atomic file and directory writes: everything is written under a temporary sibling name and renamed into
 * place only when complete, so a crash, an error or Ctrl-C never leaves a half-written file under the real
 * name. A rename within one directory is atomic on POSIX file systems; the temporary name therefore always
 * lives next to the target.
 */
import { basename, dirname, join } from "node:path";

let counter = 0;

/** A fresh temporary name next to `path` (same directory), unique within and across processes. */
export function tempSibling(path: string): string {
  const rand = crypto.getRandomValues(new Uint32Array(1))[0].toString(36);
  return join(dirname(path), `.${basename(path)}.tmp-${Deno.pid}-${++counter}-${rand}`);
}

/**
 * An OS error `e` (one of `Deno.errors`, or an "(os error N)") with `path` in front of its message when the message does not name
 * it yet ("No space left on device (os error 28)" names no file); the error keeps its class, so `instanceof
 * Deno.errors.X` checks still hold. Other errors are returned as they are.
 */
export function namingPath(path: string, e: unknown): unknown {
  if (!(e instanceof Error) || e.message.includes(path)) return e;
  // Deno raises some OS errors (ENOSPC among them) as a plain Error whose message ends "(os error N)".
  const os = Object.values(Deno.errors).some((c) => e instanceof c) || /\(os error \d+\)$/.test(e.message);
  if (!os) return e;
  const named = new (e.constructor as new (message: string) => Error)(`${path}: ${e.message}`);
  named.name = e.name;
  return named;
}

/** Removes `path` (file or directory tree), ignoring "not found". */
export async function removeIfExists(path: string): Promise<void> {
  try {
    await Deno.remove(path, { recursive: true });
  } catch (e) {
    if (!(e instanceof Deno.errors.NotFound)) throw e;
  }
}

/** Whether `path` exists (file or directory); errors other than "not found" are thrown. */
export async function pathExists(path: string): Promise<boolean> {
  try {
    await Deno.stat(path);
    return true;
  } catch (e) {
    if (e instanceof Deno.errors.NotFound) return false;
    throw e;
  }
}

/**
 * A file written piece by piece under a temporary name, renamed to its final `path` by `commit()`.
 * `abort()` (or any failed write) removes the temporary file. Use `AtomicFile.create`.
 */
export class AtomicFile {
  #closed = false;

  private constructor(readonly path: string, readonly tempPath: string, private file: Deno.FsFile) {}

  /** Opens a temporary sibling of `path` for writing (creating the parent directory if needed). */
  static async create(path: string): Promise<AtomicFile> {
    try {
      await Deno.mkdir(dirname(path), { recursive: true });
      const tempPath = tempSibling(path);
      const file = await Deno.open(tempPath, { write: true, createNew: true });
      return new AtomicFile(path, tempPath, file);
    } catch (e) {
      throw namingPath(path, e);
    }
  }

  /** Appends all of `bytes`. */
  async write(bytes: Uint8Array): Promise<void> {
    try {
      let done = 0;
      while (done < bytes.byteLength) done += await this.file.write(bytes.subarray(done));
    } catch (e) {
      await this.abort();
      throw namingPath(this.path, e);
    }
  }

  /** Flushes to disk and renames the temporary file to `path`, replacing any file already there. */
  async commit(): Promise<void> {
    if (this.#closed) throw new Error(`${this.path}: atomic write already finished`);
    this.#closed = true;
    try {
      await this.file.syncData();
      this.file.close();
      await Deno.rename(this.tempPath, this.path);
    } catch (e) {
      await removeIfExists(this.tempPath);
      throw namingPath(this.path, e);
    }
  }

  /** Drops the temporary file; `path` is left as it was. Safe to call twice. */
  async abort(): Promise<void> {
    if (this.#closed) return;
    this.#closed = true;
    try {
      this.file.close();
    } catch { /* already closed */ }
    await removeIfExists(this.tempPath);
  }
}

/** Writes `data` (bytes, or a string as UTF-8) to `path` atomically. */
export async function writeFileAtomic(path: string, data: Uint8Array | string): Promise<void> {
  const out = await AtomicFile.create(path);
  await out.write(typeof data === "string" ? new TextEncoder().encode(data) : data);
  await out.commit();
}

/** Writes `value` as indented JSON (with a final newline) to `path` atomically. */
export function writeJsonAtomic(path: string, value: unknown): Promise<void> {
  return writeFileAtomic(path, JSON.stringify(value, null, 2) + "\n");
}

/**
 * Builds a directory atomically: `fill` writes into a fresh temporary sibling directory, which is then renamed
 * to `dir`. If `dir` exists it is an error unless `overwrite` is set; then the old directory is moved aside,
 * the new one renamed in, and the old one removed (a reader sees either the old or the new tree, never a mix).
 * On any error the temporary directory is removed and `dir` is untouched.
 */
export async function writeDirAtomic<T>(
  dir: string,
  fill: (tempDir: string) => Promise<T>,
  opts: { overwrite?: boolean } = {},
): Promise<T> {
  const exists = await Deno.stat(dir).then(() => true, (e) => {
    if (e instanceof Deno.errors.NotFound) return false;
    throw e;
  });
  if (exists && !opts.overwrite) throw new Deno.errors.AlreadyExists(`${dir} already exists`);
  const temp = tempSibling(dir);
  try {
    await Deno.mkdir(dirname(dir), { recursive: true });
    await Deno.mkdir(temp);
  } catch (e) {
    throw namingPath(dir, e);
  }
  let result: T;
  try {
    result = await fill(temp);
  } catch (e) {
    await removeIfExists(temp);
    throw namingPath(dir, e);
  }
  if (exists) {
    const old = tempSibling(dir);
    await Deno.rename(dir, old);
    try {
      await Deno.rename(temp, dir);
    } catch (e) {
      await Deno.rename(old, dir);
      await removeIfExists(temp);
      throw namingPath(dir, e);
    }
    await removeIfExists(old);
  } else {
    try {
      await Deno.rename(temp, dir);
    } catch (e) {
      await removeIfExists(temp);
      throw namingPath(dir, e);
    }
  }
  return result;
}
