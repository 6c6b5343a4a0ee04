/**
 * A small static file server for importing mod.ts by URL (`deno task serve`, and the notebook tests): serves
 * one directory on 127.0.0.1 with the content types Deno needs to load TypeScript modules by URL (Python's
 * http.server sends `.ts` as `text/vnd.trolltech.linguist`, which Deno refuses), and records the paths it
 * served.
 */
import { extname, join, normalize } from "node:path";

const CONTENT_TYPES: Record<string, string> = {
  ".ts": "application/typescript; charset=utf-8",
  ".js": "text/javascript; charset=utf-8",
  ".json": "application/json; charset=utf-8",
};

/** A running file server. */
export interface FileServer {
  /** Its base URL, ending in "/" (e.g. `http://127.0.0.1:40123/`). */
  url: string;
  /** Paths served with status 200, in order (e.g. `/mod.ts`). */
  served: string[];
  /** Settles when the server has stopped. */
  finished: Promise<void>;
  /** Stops the server. */
  close(): Promise<void>;
}

/** Serves the files under `root` (nothing outside it) on 127.0.0.1:`port` (0: a free port) until `close()`. */
export function serveDirectory(root: string, port = 0): FileServer {
  const served: string[] = [];
  const server = Deno.serve({ hostname: "127.0.0.1", port, onListen: () => {} }, async (req) => {
    const path = normalize(decodeURIComponent(new URL(req.url).pathname));
    if (path.split("/").includes("..")) return new Response("bad path", { status: 400 });
    try {
      const body = await Deno.readFile(join(root, path));
      served.push(path);
      const type = CONTENT_TYPES[extname(path)] ?? "application/octet-stream";
      return new Response(body, { headers: { "content-type": type } });
    } catch {
      return new Response("not found", { status: 404 });
    }
  });
  return {
    url: `http://127.0.0.1:${server.addr.port}/`,
    served,
    finished: server.finished,
    close: () => server.shutdown(),
  };
}
