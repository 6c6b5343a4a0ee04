/**
 * Values from users' files in one-line error messages: a tensor name, a role or a key is shown as it is, or
 * JSON-quoted when it holds a line break or another control character (which would break the one line).
 */

/** `text` as a one-line message shows it. */
export function printable(text: string): string {
  // deno-lint-ignore no-control-regex
  return /[\u0000-\u001f\u007f\u2028\u2029]/.test(text) ? JSON.stringify(text) : text;
}
