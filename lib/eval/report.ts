/**
 * Reports of a speculative-decoding evaluation (lib/eval/speculative.ts `runSpeculativeEval`): a JSON
 * summary, a self-contained SVG histogram of accept lengths, and an HTML page showing, for a few samples,
 * each round's proposed tree tokens, which were accepted and rejected, and the target's bonus token. Files
 * are written atomically (lib/io/atomic.ts).
 */
import { join } from "node:path";
import { writeFileAtomic, writeJsonAtomic } from "../io/atomic.ts";
import type { SpeculativeEvalResult } from "./speculative.ts";

/** The JSON summary (no per-round data). */
export function evalSummary(
  r: SpeculativeEvalResult,
  extra: Record<string, unknown> = {},
): Record<string, unknown> {
  return {
    ...extra,
    num_steps: r.config.numSteps,
    topk: r.config.topk,
    num_draft_tokens: r.config.numDraftTokens,
    temperature: r.temperature,
    num_samples: r.samples.length,
    rounds: r.stats.rounds,
    tau: r.stats.tau,
    accepted_at_position: r.stats.acceptedAtPosition,
    conditional_acceptance: r.stats.conditionalAcceptance,
    accept_length_histogram: r.stats.histogram,
    new_tokens: r.samples.reduce((a, s) => a + s.output.tokens.length, 0),
    target_tokens_per_second: r.targetTokensPerSecond,
    speculative_tokens_per_second: r.speculativeTokensPerSecond,
    speedup: r.speedup,
    matches_target_greedy: r.matchesTargetGreedy,
  };
}

function esc(s: string): string {
  return s.replace(/&/g, "&amp;").replace(/</g, "&lt;").replace(/>/g, "&gt;").replace(/"/g, "&quot;");
}

/** An SVG bar chart of the accept-length histogram (rounds per accept length 1..numSteps+1). */
export function histogramSvg(histogram: number[], title: string): string {
  const W = 520, H = 300, L = 56, R = 16, T = 36, B = 44;
  const max = Math.max(1, ...histogram);
  const bw = (W - L - R) / histogram.length;
  const y = (v: number) => T + (H - T - B) * (1 - v / max);
  const bars = histogram.map((v, i) => {
    const x = L + i * bw + bw * 0.1;
    return `<rect x="${x.toFixed(1)}" y="${y(v).toFixed(1)}" width="${(bw * 0.8).toFixed(1)}" ` +
      `height="${(H - B - y(v)).toFixed(1)}" fill="#1f77b4"/>` +
      `<text x="${(x + bw * 0.4).toFixed(1)}" y="${H - B + 16}" text-anchor="middle">${i + 1}</text>` +
      `<text x="${(x + bw * 0.4).toFixed(1)}" y="${(y(v) - 4).toFixed(1)}" text-anchor="middle">${v}</text>`;
  }).join("\n");
  return `<svg xmlns="http://www.w3.org/2000/svg" width="${W}" height="${H}" font-family="sans-serif" ` +
    `font-size="12">
<rect width="${W}" height="${H}" fill="white"/>
<text x="${W / 2}" y="20" text-anchor="middle" font-size="14">${esc(title)}</text>
<line x1="${L}" y1="${H - B}" x2="${W - R}" y2="${H - B}" stroke="black"/>
<line x1="${L}" y1="${T}" x2="${L}" y2="${H - B}" stroke="black"/>
<text x="${W / 2}" y="${H - 8}" text-anchor="middle">accept length (tokens per target forward)</text>
<text x="14" y="${H / 2}" transform="rotate(-90 14 ${H / 2})" text-anchor="middle">rounds</text>
${bars}
</svg>
`;
}

/**
 * An HTML page of the first `maxSamples` samples: the prompt, then per round the verified tree's draft
 * tokens (accepted in green, rejected in red, struck through), the bonus token (blue), and the committed
 * text. `decode` turns ids into text (token ids are shown when absent).
 */
export function samplesHtml(
  r: SpeculativeEvalResult,
  summary: Record<string, unknown>,
  decode: (ids: number[]) => string = (ids) => ids.map((t) => `⟨${t}⟩`).join(""),
  maxSamples = 5,
): string {
  const tok = (t: number, cls: string, title: string) =>
    `<span class="${cls}" title="${esc(title)} (id ${t})">${esc(decode([t]) || `⟨${t}⟩`)}</span>`;
  const sections = r.samples.slice(0, maxSamples).map((s, i) => {
    const rounds = s.output.rounds.map((round, k) => {
      const onPath = new Set(round.path);
      const drafts = round.tokens.slice(1).map((t, j) => {
        const node = j + 1;
        const depth = depthOf(round.parents, node);
        return onPath.has(node)
          ? tok(t, "acc", `accepted, depth ${depth}`)
          : tok(t, "rej", `rejected, depth ${depth}, parent node ${round.parents[node]}`);
      }).join(" ");
      return `<tr><td>${k + 1}</td><td>${round.accepted.length + 1}</td><td>${drafts}</td>` +
        `<td>${tok(round.bonus, "bonus", "bonus (target)")}</td><td class="text">${
          esc(decode(round.emitted))
        }</td></tr>`;
    }).join("\n");
    return `<h2>Sample ${i + 1}</h2>
<p class="text"><b>Prompt:</b> ${esc(decode(s.prompt))}</p>
<p class="text"><b>Output:</b> ${esc(decode(s.output.tokens))}</p>
<table><tr><th>round</th><th>accept length</th><th>proposed tree (node order)</th><th>bonus</th><th>committed</th></tr>
${rounds}
</table>`;
  }).join("\n");
  return `<!doctype html>
<html><head><meta charset="utf-8"><title>Eaglet speculative decoding</title>
<style>
body { font-family: sans-serif; margin: 2em; }
table { border-collapse: collapse; } td, th { border: 1px solid #ccc; padding: 3px 6px; vertical-align: top; }
.acc { background: #c8f7c5; } .rej { background: #f7c5c5; text-decoration: line-through; }
.bonus { background: #c5d8f7; } .text { white-space: pre-wrap; }
span { font-family: monospace; padding: 0 2px; }
</style></head><body>
<h1>Speculative decoding</h1>
<pre>${esc(JSON.stringify(summary, null, 2))}</pre>
<img src="accept_length_histogram.svg" alt="accept length histogram">
${sections}
</body></html>
`;
}

function depthOf(parents: number[], node: number): number {
  let d = 0;
  for (let n = node; n > 0; n = parents[n]) d++;
  return d;
}

/** Paths written by {@link writeEvalReport}. */
export interface EvalReportFiles {
  /** Path of eval.json (the summary object as JSON). */
  json: string;
  /** Path of accept_length_histogram.svg (how many rounds had each accept length). */
  svg: string;
  /** Path of samples.html (the first samples' rounds, accepted and rejected draft tokens marked). */
  html: string;
}

/** Writes eval.json, accept_length_histogram.svg and samples.html into `dir` (created if needed). */
export async function writeEvalReport(
  dir: string,
  r: SpeculativeEvalResult,
  summary: Record<string, unknown>,
  decode?: (ids: number[]) => string,
): Promise<EvalReportFiles> {
  await Deno.mkdir(dir, { recursive: true });
  const files = {
    json: join(dir, "eval.json"),
    svg: join(dir, "accept_length_histogram.svg"),
    html: join(dir, "samples.html"),
  };
  await writeJsonAtomic(files.json, summary);
  const title = `accept length, tau = ${r.stats.tau.toFixed(3)} (${r.stats.rounds} rounds)`;
  await writeFileAtomic(files.svg, histogramSvg(r.stats.histogram, title));
  await writeFileAtomic(files.html, samplesHtml(r, summary, decode));
  return files;
}
