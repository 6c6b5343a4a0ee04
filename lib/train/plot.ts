/**
 * A self-contained SVG of a run's curves: the loss per optimizer update (train as a line, eval as dots) and
 * every acc_k per update (one line per TTT position k, eval as dots of the same colour). No scripts, no external
 * files: it opens in any browser or image viewer. Written at each evaluation and at the end of a run.
 */
import type { MetricsRecord } from "./metrics.ts";

const W = 760, PANEL_H = 260, PAD_L = 64, PAD_R = 150, PAD_T = 34, PAD_B = 40;

/** Colours of acc_0..acc_K-1 (then cycling). */
const PALETTE = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f"];

function esc(s: string): string {
  return s.replace(/&/g, "&amp;").replace(/</g, "&lt;").replace(/>/g, "&gt;");
}

/** About 5 round tick values covering [lo, hi]. */
function ticks(lo: number, hi: number): number[] {
  if (!(hi > lo)) return [lo];
  const raw = (hi - lo) / 5;
  const mag = 10 ** Math.floor(Math.log10(raw));
  const step = [1, 2, 5, 10].map((m) => m * mag).find((s) => s >= raw) ?? raw;
  const out: number[] = [];
  for (let v = Math.ceil(lo / step) * step; v <= hi + step * 1e-9; v += step) {
    out.push(Number(v.toPrecision(12)));
  }
  return out;
}

interface Series {
  label: string;
  color: string;
  points: Array<[number, number]>;
  dots: boolean;
}

function panel(title: string, y0: number, series: Series[], xMax: number, yRange?: [number, number]): string {
  const all = series.flatMap((s) => s.points).filter(([, y]) => Number.isFinite(y));
  let lo = yRange?.[0] ?? Math.min(...all.map(([, y]) => y));
  let hi = yRange?.[1] ?? Math.max(...all.map(([, y]) => y));
  if (!Number.isFinite(lo) || !Number.isFinite(hi)) [lo, hi] = [0, 1];
  if (hi - lo < 1e-9) [lo, hi] = [lo - 0.5, hi + 0.5];
  const x1 = W - PAD_R, yTop = y0 + PAD_T, yBot = y0 + PANEL_H - PAD_B;
  const sx = (x: number) => PAD_L + (x / Math.max(1, xMax)) * (x1 - PAD_L);
  const sy = (y: number) => yBot - ((y - lo) / (hi - lo)) * (yBot - yTop);
  const parts: string[] = [];
  parts.push(`<text x="${PAD_L}" y="${y0 + 20}" font-size="14" font-weight="bold">${esc(title)}</text>`);
  parts.push(
    `<rect x="${PAD_L}" y="${yTop}" width="${x1 - PAD_L}" height="${
      yBot - yTop
    }" fill="none" stroke="#888"/>`,
  );
  for (const t of ticks(lo, hi)) {
    parts.push(`<line x1="${PAD_L}" x2="${x1}" y1="${sy(t)}" y2="${sy(t)}" stroke="#eee"/>`);
    parts.push(`<text x="${PAD_L - 6}" y="${sy(t) + 4}" font-size="11" text-anchor="end">${t}</text>`);
  }
  for (const t of ticks(0, xMax)) {
    parts.push(`<text x="${sx(t)}" y="${yBot + 16}" font-size="11" text-anchor="middle">${t}</text>`);
  }
  parts.push(
    `<text x="${(PAD_L + x1) / 2}" y="${
      yBot + 32
    }" font-size="11" text-anchor="middle">optimizer update</text>`,
  );
  series.forEach((s, i) => {
    const pts = s.points.filter(([, y]) => Number.isFinite(y));
    if (s.dots) {
      for (const [x, y] of pts) {
        parts.push(
          `<circle cx="${sx(x).toFixed(1)}" cy="${
            sy(y).toFixed(1)
          }" r="3.5" fill="${s.color}" stroke="#000" stroke-width="0.6"/>`,
        );
      }
    } else if (pts.length > 0) {
      const d = pts.map(([x, y], j) => `${j ? "L" : "M"}${sx(x).toFixed(1)},${sy(y).toFixed(1)}`).join("");
      parts.push(`<path d="${d}" fill="none" stroke="${s.color}" stroke-width="1.5"/>`);
    }
    const ly = yTop + 6 + 16 * i;
    parts.push(
      s.dots
        ? `<circle cx="${x1 + 18}" cy="${ly}" r="3.5" fill="${s.color}" stroke="#000" stroke-width="0.6"/>`
        : `<line x1="${x1 + 10}" x2="${
          x1 + 26
        }" y1="${ly}" y2="${ly}" stroke="${s.color}" stroke-width="2"/>`,
    );
    parts.push(`<text x="${x1 + 32}" y="${ly + 4}" font-size="11">${esc(s.label)}</text>`);
  });
  return parts.join("\n");
}

/** The SVG document of a run's records (train and eval), titled `title`. */
export function renderTrainingPlot(records: readonly MetricsRecord[], title: string): string {
  const train = records.filter((r) => r.split === "train");
  const evals = records.filter((r) => r.split === "eval");
  const xMax = Math.max(1, ...records.map((r) => r.step));
  const k = Math.max(0, ...records.map((r) => r.acc.length));
  const lossSeries: Series[] = [
    { label: "train loss", color: "#1f77b4", points: train.map((r) => [r.step, r.loss]), dots: false },
  ];
  if (evals.length) {
    lossSeries.push({
      label: "eval loss",
      color: "#d62728",
      points: evals.map((r) => [r.step, r.loss]),
      dots: true,
    });
  }
  const accSeries: Series[] = [];
  for (let i = 0; i < k; i++) {
    const color = PALETTE[i % PALETTE.length];
    accSeries.push({
      label: `acc_${i}`,
      color,
      points: train.map((r) => [r.step, r.acc[i] ?? NaN]),
      dots: false,
    });
  }
  for (let i = 0; i < k && evals.length; i++) {
    const color = PALETTE[i % PALETTE.length];
    accSeries.push({
      label: `eval acc_${i}`,
      color,
      points: evals.map((r) => [r.step, r.acc[i] ?? NaN]),
      dots: true,
    });
  }
  const height = 2 * PANEL_H + 40;
  return [
    `<?xml version="1.0" encoding="UTF-8"?>`,
    `<svg xmlns="http://www.w3.org/2000/svg" width="${W}" height="${height}" viewBox="0 0 ${W} ${height}" font-family="sans-serif">`,
    `<rect width="100%" height="100%" fill="#fff"/>`,
    `<text x="${W / 2}" y="22" font-size="15" text-anchor="middle">${esc(title)}</text>`,
    panel("loss (mean of ploss_k)", 30, lossSeries, xMax),
    panel("accuracy per TTT position", 30 + PANEL_H, accSeries, xMax, [0, 1]),
    `</svg>`,
    "",
  ].join("\n");
}
