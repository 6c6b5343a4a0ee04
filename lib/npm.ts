/**
 * The npm packages Eaglet's library uses, each named once here with its exact version.
 *
 * The specifiers are fully qualified (`npm:name@version`) rather than bare names of deno.json's import map,
 * because an import map only applies inside this repository: a notebook or a script elsewhere that imports
 * mod.ts by URL (`http://127.0.0.1:8000/mod.ts`, or a published `https://` copy) brings its own import map, or
 * none, and Deno resolves these specifiers from the npm registry there. Every other module imports the
 * packages from this file, so a version changes in one place; tests/notebook/url_import_test.ts checks that
 * no other module of the library names a package. (`deno lint`'s no-import-prefix rule refuses an inline
 * `npm:` import; it does not apply to these re-exports.)
 *
 * @module
 */

/** YAML 1.2 parser (run configs, `--config`). */
export { parse as parseYaml } from "npm:yaml@2.9.1";
/** Hugging Face tokenizer.json encoder/decoder. */
export { Tokenizer } from "npm:@huggingface/tokenizers@0.2.0";
/** Jinja renderer of the tokenizers' chat templates. */
export { Template } from "npm:@huggingface/jinja@0.5.11";
/** Parquet reader (dataset files). */
export { parquetMetadataAsync, parquetReadObjects } from "npm:hyparquet@1.33.0";
/** A random-access byte source the Parquet reader reads from. */
export type { AsyncBuffer } from "npm:hyparquet@1.33.0";
