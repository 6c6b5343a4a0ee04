/**
 * Values from users' files in one-line error messages: a tensor name, a role or a key is shown as it is, or
 * JSON-quoted when it holds a line break or another control character (which would break the one line); any
 * text can be made one line by escaping those characters.
 */

/** Control characters, DEL and the Unicode line and paragraph separators: what breaks a one-line message. */
// deno-lint-ignore no-control-regex
const BREAKING = /[\u0000-\u001f\u007f\u2028\u2029]/;
// deno-lint-ignore no-control-regex
const BREAKING_ALL = /[\u0000-\u001f\u007f\u2028\u2029]/g;

/**
 * `text` with every control character, DEL, U+2028 and U+2029 written as \uXXXX (JSON.stringify leaves the
 * last three raw; V8's JSON.parse messages quote the bad input raw).
 */
export function oneLine(text: string): string {
  return text.replace(BREAKING_ALL, (c) => `\\u${c.charCodeAt(0).toString(16).padStart(4, "0")}`);
}

/** `text` as a one-line message shows it: as is, or JSON-quoted (and escaped) when it holds such characters. */
export function printable(text: string): string {
  return BREAKING.test(text) ? oneLine(JSON.stringify(text)) : text;
}
