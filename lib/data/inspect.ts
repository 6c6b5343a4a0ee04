/**
 * A tokenized sample made visible (`deno task inspect-data`): each token with its text and whether it is
 * supervised, rendered for a terminal (ANSI colours), as a standalone HTML page, or as JSON for scripts.
 * Token boundaries are visible: neighbouring tokens alternate shades, supervised ones are green.
 */

import type { ChatTokenizer } from "./tokenizer.ts";

/** One sample, token by token. */
export interface InspectedSample {
  id: string;
  template: string;
  maxLength: number;
  truncated: boolean;
  /** Rendered text (absent for pre-tokenized samples). */
  text: string | null;
  inputIds: number[];
  /** Decoded text of each token alone. */
  tokens: string[];
  lossMask: number[];
}

/** Builds the per-token view of a sample. */
export function inspectSample(
  tok: ChatTokenizer,
  sample: {
    id: string;
    inputIds: ArrayLike<number>;
    lossMask: ArrayLike<number>;
    text?: string | null;
    truncated?: boolean;
  },
  template: string,
  maxLength: number,
): InspectedSample {
  const ids = Array.from(sample.inputIds);
  return {
    id: sample.id,
    template,
    maxLength,
    truncated: sample.truncated ?? false,
    text: sample.text ?? null,
    inputIds: ids,
    tokens: ids.map((id) => tok.decode([id])),
    lossMask: Array.from(sample.lossMask),
  };
}

function visible(s: string): string {
  return s.replace(/\n/g, "↵\n").replace(/\t/g, "→");
}

/** Terminal rendering: supervised tokens on green, others dim, alternating shades mark boundaries. */
export function renderTerminal(s: InspectedSample, color = true): string {
  const supervised = s.lossMask.reduce((a, b) => a + b, 0);
  const head =
    `sample ${s.id} · template ${s.template} · max_length ${s.maxLength} · ${s.inputIds.length} tokens` +
    ` · ${supervised} supervised${s.truncated ? " · truncated" : ""}\n`;
  if (!color) {
    // Without colours: supervised tokens in ⟦ ⟧, every boundary as │.
    const body = s.tokens.map((t, i) => (s.lossMask[i] ? `⟦${visible(t)}⟧` : visible(t))).join("│");
    return `${head}${body}\n`;
  }
  const shades = s.tokens.map((t, i) => {
    const even = i % 2 === 0;
    const style = s.lossMask[i]
      ? (even ? "\x1b[30;42m" : "\x1b[30;102m")
      : (even ? "\x1b[2;47;30m" : "\x1b[2;100;37m");
    return `${style}${visible(t)}\x1b[0m`;
  });
  return `${head}${shades.join("")}\n\x1b[30;42m supervised \x1b[0m \x1b[2;47;30m not supervised \x1b[0m\n`;
}

function escapeHtml(s: string): string {
  return s.replace(/&/g, "&amp;").replace(/</g, "&lt;").replace(/>/g, "&gt;").replace(/"/g, "&quot;");
}

/** A standalone HTML page (no external resources); hovering a token shows its index and id. */
export function renderHtml(s: InspectedSample): string {
  const supervised = s.lossMask.reduce((a, b) => a + b, 0);
  const spans = s.tokens.map((t, i) => {
    const cls = `${s.lossMask[i] ? "sup" : "ctx"} ${i % 2 ? "odd" : "even"}`;
    const nl = t.includes("\n") ? "<br>" : "";
    return `<span class="${cls}" title="#${i} id ${s.inputIds[i]}${s.lossMask[i] ? " supervised" : ""}">${
      escapeHtml(t.replace(/\n/g, "↵"))
    }</span>${nl}`;
  }).join("");
  return `<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>Eaglet sample ${escapeHtml(s.id)}</title>
<style>
body { font: 14px/1.4 system-ui, sans-serif; margin: 2em; }
.tokens { font: 13px/1.9 ui-monospace, monospace; white-space: pre-wrap; word-break: break-all; }
.tokens span { border-right: 1px solid #888; padding: 1px 0; }
.ctx.even { background: #eee; color: #666; } .ctx.odd { background: #ddd; color: #666; }
.sup.even { background: #9be59b; } .sup.odd { background: #6fd46f; }
dt { font-weight: bold; } dd { margin: 0 0 .5em 1em; }
</style></head><body>
<h1>Sample ${escapeHtml(s.id)}</h1>
<dl><dt>chat template</dt><dd>${escapeHtml(s.template)}</dd><dt>max_length</dt><dd>${s.maxLength}</dd>
<dt>tokens</dt><dd>${s.inputIds.length}${
    s.truncated ? " (truncated)" : ""
  }, ${supervised} supervised</dd></dl>
<p><span style="background:#9be59b">green</span>: supervised (loss mask 1); grey: context. Borders mark token boundaries; hover for the index and id.</p>
<div class="tokens">${spans}</div>
</body></html>
`;
}
