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
${headlineTable(summary)}
<p>All figures: <a href="eval.json">eval.json</a>; curves and settings: <a href="report.html">report.html</a>.</p>
<img src="accept_length_histogram.svg" alt="accept length histogram">
${sections}
</body></html>
`;
}

/** The summary's headline figures as a two-column table, labelled in words (the page opens with these). */
function headlineTable(summary: Record<string, unknown>): string {
  const fmt = (v: unknown) =>
    typeof v === "number"
      ? (Number.isInteger(v) ? String(v) : v.toFixed(3))
      : v === null
      ? "not measured"
      : String(v);
  const rows: [string, unknown][] = [
    ["accept length τ (tokens per target forward)", summary.tau],
    [
      "draft steps / branches per level / verified nodes",
      `${summary.num_steps} / ${summary.topk} / ${summary.num_draft_tokens}`,
    ],
    ["temperature", summary.temperature],
    ["samples / new tokens / rounds", `${summary.num_samples} / ${summary.new_tokens} / ${summary.rounds}`],
    ["speed-up (measured tokens/s with the draft ÷ without)", summary.speedup],
    ["output equals the target's greedy output", summary.matches_target_greedy],
  ];
  return `<table>${
    rows.filter(([, v]) => v !== undefined).map(([k, v]) =>
      `<tr><th>${esc(k)}</th><td>${esc(fmt(v))}</td></tr>`
    )
      .join("")
  }</table>`;
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
  /** Path of report.html (headline, histogram, per-position acceptance, settings, links; inline SVG). */
  report: string;
}

/** Writes eval.json, accept_length_histogram.svg, samples.html and report.html into `dir` (created if needed). */
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
    report: join(dir, "report.html"),
  };
  await writeJsonAtomic(files.json, summary);
  const title = `accept length, tau = ${r.stats.tau.toFixed(3)} (${r.stats.rounds} rounds)`;
  await writeFileAtomic(files.svg, histogramSvg(r.stats.histogram, title));
  await writeFileAtomic(files.html, samplesHtml(r, summary, decode));
  const fmt = (x: number | null) => x === null ? "n/a" : x.toFixed(2);
  await writeFileAtomic(
    files.report,
    renderReportHtml({
      title: "Eaglet evaluation",
      headline: {
        "acceptance length τ": `${r.stats.tau.toFixed(3)} (${r.stats.rounds} rounds)`,
        "tokens/s target alone": fmt(r.targetTokensPerSecond),
        "tokens/s with the draft": fmt(r.speculativeTokensPerSecond),
        "speedup": `${fmt(r.speedup)}×`,
      },
      histogram: r.stats.histogram,
      acceptedAtPosition: r.stats.acceptedAtPosition,
      settings: summary,
      links: [
        { label: "speculative rounds of the first samples", href: "samples.html" },
        { label: "eval.json", href: "eval.json" },
      ],
    }),
  );
  return files;
}

/** The demo's measured timing split and its projection to dearer targets ({@link speedupProjection}). */
export interface SpeedupProjection {
  /** Measured seconds of one target-only decode forward (one token). */
  targetForwardSeconds: number;
  /** Measured seconds of one speculative round (draft forwards + verify + cache updates). */
  roundSeconds: number;
  /** Measured draft-side seconds per draft forward: (round − one target forward) / draft forwards per round. */
  draftForwardSeconds: number;
  /** Measured tokens committed per round. */
  tokensPerRound: number;
  /** The measured target-forward / draft-forward cost ratio. */
  measuredRatio: number;
  /** Projected speedups for targets N× dearer per forward than the draft (a model, not a measurement). */
  projected: { factor: number; speedup: number }[];
}

/**
 * Splits the measured decode time into target and draft parts and projects the speedup for a target whose
 * forward costs N draft forwards. Model (Leviathan et al. 2023, "Fast Inference from Transformers via
 * Speculative Decoding", the walltime improvement L / (k·c + 1) with cost ratio c = 1/N): one round = k draft
 * forwards + one verify forward, the verify of k+1 tokens costing one decode forward (memory-bound target);
 * with d = measured draft-side time per draft forward and L = measured tokens per round,
 * speedup(N) = L·N·d / (N·d + k·d) = L·N / (N + k). Null when
 * speed was not measured or no round ran.
 */
export function speedupProjection(
  result: SpeculativeEvalResult,
  factors: number[] = [1, 10, 100],
): SpeedupProjection | null {
  let specSeconds = 0, rounds = 0, specTokens = 0, targetSeconds = 0, targetTokens = 0;
  for (const s of result.samples) {
    specSeconds += s.output.decodeSeconds;
    rounds += s.output.rounds.length;
    specTokens += Math.max(0, s.output.tokens.length - 1);
    if (s.targetTokens === null || s.targetDecodeSeconds === null) return null;
    targetSeconds += s.targetDecodeSeconds;
    targetTokens += Math.max(0, s.targetTokens.length - 1);
  }
  if (rounds === 0 || targetTokens === 0 || specSeconds <= 0 || targetSeconds <= 0) return null;
  const k = result.config.numSteps;
  const targetForwardSeconds = targetSeconds / targetTokens;
  const roundSeconds = specSeconds / rounds;
  // The draft side: everything in a round but the verify forward, floored at a tenth of the round.
  const draftForwardSeconds = Math.max(roundSeconds - targetForwardSeconds, roundSeconds / 10) / k;
  const tokensPerRound = specTokens / rounds;
  const projected = factors.map((factor) => ({ factor, speedup: (tokensPerRound * factor) / (factor + k) }));
  return {
    targetForwardSeconds,
    roundSeconds,
    draftForwardSeconds,
    tokensPerRound,
    measuredRatio: targetForwardSeconds / draftForwardSeconds,
    projected,
  };
}

/** What one report.html shows ({@link renderReportHtml}); every part but the title is optional. */
export interface ReportPage {
  /** The page's heading. */
  title: string;
  /** Headline numbers (label → value), shown first. */
  headline?: Record<string, string>;
  /** The training curves (lib/train/plot.ts's SVG), inlined. */
  curvesSvg?: string;
  /** Rounds per accept length 1..numSteps+1. */
  histogram?: number[];
  /** Fraction of rounds whose draft token at position k was accepted, k = 1..numSteps. */
  acceptedAtPosition?: number[];
  /** The run's settings (name → value). */
  settings?: Record<string, unknown>;
  /** Links to the other views (relative paths). */
  links?: { label: string; href: string }[];
}

/** An SVG bar chart of per-position acceptance rates (0..1), positions 1..K. */
export function positionSvg(rates: number[]): string {
  const W = 520, H = 260, L = 56, R = 16, T = 36, B = 44;
  const bw = (W - L - R) / Math.max(1, rates.length);
  const y = (v: number) => T + (H - T - B) * (1 - Math.min(1, Math.max(0, v)));
  const bars = rates.map((v, i) => {
    const x = L + i * bw + bw * 0.1, cx = (x + bw * 0.4).toFixed(1);
    return `<rect x="${x.toFixed(1)}" y="${y(v).toFixed(1)}" width="${(bw * 0.8).toFixed(1)}" ` +
      `height="${(H - B - y(v)).toFixed(1)}" fill="#2ca02c"/>` +
      `<text x="${cx}" y="${H - B + 16}" text-anchor="middle">${i + 1}</text>` +
      `<text x="${cx}" y="${(y(v) - 4).toFixed(1)}" text-anchor="middle">${v.toFixed(2)}</text>`;
  }).join("\n");
  return `<svg xmlns="http://www.w3.org/2000/svg" width="${W}" height="${H}" font-family="sans-serif" ` +
    `font-size="12">
<rect width="${W}" height="${H}" fill="white"/>
<text x="${W / 2}" y="20" text-anchor="middle" font-size="14">accepted at draft position k</text>
<line x1="${L}" y1="${H - B}" x2="${W - R}" y2="${H - B}" stroke="black"/>
<line x1="${L}" y1="${T}" x2="${L}" y2="${H - B}" stroke="black"/>
<text x="${W / 2}" y="${H - 8}" text-anchor="middle">draft position k</text>
<text x="14" y="${H / 2}" transform="rotate(-90 14 ${H / 2})" text-anchor="middle">fraction of rounds</text>
${bars}
</svg>
`;
}

/**
 * One self-contained HTML page (no server, no script; SVG inlined): headline numbers, training curves,
 * accept-length histogram, per-position acceptance, settings, and links to the sample views.
 */
export function renderReportHtml(p: ReportPage): string {
  const table = (o: Record<string, unknown>) =>
    `<table>${
      Object.entries(o).map(([k, v]) =>
        `<tr><th>${esc(k)}</th><td>${esc(typeof v === "string" ? v : JSON.stringify(v))}</td></tr>`
      ).join("")
    }</table>`;
  const parts = [`<h1>${esc(p.title)}</h1>`];
  if (p.headline) parts.push(`<section id="headline">${table(p.headline)}</section>`);
  if (p.curvesSvg) parts.push(`<section id="curves"><h2>Training curves</h2>${p.curvesSvg}</section>`);
  if (p.histogram) {
    const title = "rounds per accept length";
    parts.push(
      `<section id="histogram"><h2>Accept lengths</h2>${histogramSvg(p.histogram, title)}</section>`,
    );
  }
  if (p.acceptedAtPosition) {
    parts.push(
      `<section id="positions"><h2>Acceptance per draft position</h2>${
        positionSvg(p.acceptedAtPosition)
      }</section>`,
    );
  }
  if (p.links?.length) {
    const li = p.links.map((l) => `<li><a href="${esc(l.href)}">${esc(l.label)}</a></li>`).join("");
    parts.push(`<section id="links"><h2>Views</h2><ul>${li}</ul></section>`);
  }
  if (p.settings) parts.push(`<section id="settings"><h2>Settings</h2>${table(p.settings)}</section>`);
  return `<!DOCTYPE html>
<html><head><meta charset="utf-8"><title>${esc(p.title)}</title>
<style>body{font-family:sans-serif;margin:2em;max-width:1100px}table{border-collapse:collapse}
th,td{border:1px solid #ccc;padding:2px 8px;text-align:left;font-size:13px}th{background:#f4f4f4}
section{margin:1.5em 0}svg{max-width:100%;height:auto}</style></head>
<body>
${parts.join("\n")}
</body></html>
`;
}
