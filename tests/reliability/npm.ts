/**
 * The npm packages only the tests use, each once with its exact version (as lib/npm.ts does for the library;
 * kept apart so that importing mod.ts never loads them).
 */

/** fast-check: property-based testing (arbitraries, shrinking). */
export { default as fc } from "npm:fast-check@4.11.0";
