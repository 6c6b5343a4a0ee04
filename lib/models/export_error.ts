/** The error of lib/models/export.ts and its serving formats. */

/** A bad export: a missing or unexpected tensor, a wrong shape or dtype, a config that does not match. */
export class ExportError extends Error {
  /** Error name shown in stack traces and messages. */
  override name = "ExportError";
}
