/**
 * Atomic file output: everything the data pipeline writes goes to a temporary sibling first and is renamed
 * into place only once complete, so an interrupted run never leaves a half-written file under the final
 * name.
 */

function tempName(path: string): string {
  return `${path}.tmp-${Deno.pid}-${crypto.randomUUID().slice(0, 8)}`;
}

/** Writes `data` to `path` through a temporary sibling file renamed into place once complete. */
export async function writeFileAtomic(path: string, data: Uint8Array | string): Promise<void> {
  const tmp = tempName(path);
  try {
    if (typeof data === "string") await Deno.writeTextFile(tmp, data);
    else await Deno.writeFile(tmp, data);
    await Deno.rename(tmp, path);
  } catch (e) {
    await Deno.remove(tmp).catch(() => {});
    throw e;
  }
}

/**
 * A file written in pieces (e.g. JSON lines) under a temporary name; `commit()` renames it to its final
 * path, `abort()` deletes it. Buffers small writes.
 */
export class AtomicFileWriter {
  readonly path: string;
  readonly tempPath: string;
  #file: Deno.FsFile;
  #pending: Uint8Array[] = [];
  #pendingBytes = 0;
  #encoder = new TextEncoder();
  #closed = false;

  private constructor(path: string, file: Deno.FsFile, tempPath: string) {
    this.path = path;
    this.tempPath = tempPath;
    this.#file = file;
  }

  /** Opens a temporary sibling of `path` for writing. */
  static async open(path: string): Promise<AtomicFileWriter> {
    const tmp = tempName(path);
    const file = await Deno.open(tmp, { write: true, create: true, truncate: true });
    return new AtomicFileWriter(path, file, tmp);
  }

  /** Appends text (UTF-8) or bytes. */
  async write(chunk: string | Uint8Array): Promise<void> {
    const bytes = typeof chunk === "string" ? this.#encoder.encode(chunk) : chunk;
    this.#pending.push(bytes);
    this.#pendingBytes += bytes.byteLength;
    if (this.#pendingBytes >= 1 << 20) await this.#flush();
  }

  async #flush(): Promise<void> {
    const all = new Uint8Array(this.#pendingBytes);
    let o = 0;
    for (const p of this.#pending) {
      all.set(p, o);
      o += p.byteLength;
    }
    this.#pending = [];
    this.#pendingBytes = 0;
    let written = 0;
    while (written < all.byteLength) written += await this.#file.write(all.subarray(written));
  }

  /** Flushes, closes and renames the file to its final path. */
  async commit(): Promise<void> {
    try {
      await this.#flush();
      await this.#file.syncData();
    } finally {
      this.#closeOnce();
    }
    await Deno.rename(this.tempPath, this.path);
  }

  /** Closes and deletes the temporary file; the final path is untouched. Safe to call after commit. */
  async abort(): Promise<void> {
    this.#closeOnce();
    await Deno.remove(this.tempPath).catch(() => {});
  }

  #closeOnce(): void {
    if (this.#closed) return;
    this.#closed = true;
    this.#file.close();
  }
}
