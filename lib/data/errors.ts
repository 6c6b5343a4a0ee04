/**
 * Errors of the data pipeline. Every message names where the problem is (a file, and a line or record
 * when there is one) and what was expected, so a CLI can print it as one line.
 */

/** Bad input data or a bad data option; `message` is a complete one-line explanation. */
export class DataError extends Error {
  override name = "DataError";
}

/**
 * Where a record came from, for error messages: `file:line` for JSON lines, `file record N` for a JSON
 * array, `file row N` for parquet.
 */
export type RecordSource = string;
