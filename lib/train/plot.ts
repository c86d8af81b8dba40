/**
 * A loss curve as a standalone SVG, hand-written so the package needs no plotting dependency.
 * The y axis is logarithmic (loss spans decades during training) when every value is > 0.
 */
import { LoraTypeError } from '../errors';
import { checkOptions } from '../validate';

export interface CurveOptions {
  title?: string;
  width?: number;
  height?: number;
  /** Default: log scale when every loss is > 0. */
  logScale?: boolean;
}

function esc(s: string): string {
  return s.replace(/&/g, '&amp;').replace(/</g, '&lt;').replace(/>/g, '&gt;').replace(/"/g, '&quot;');
}

function fmt(v: number): string {
  if (v === 0) return '0';
  const a = Math.abs(v);
  return a >= 1e4 || a < 1e-2 ? v.toExponential(0) : String(Number(v.toPrecision(2)));
}

export function lossCurveSvg(losses: readonly number[], opts: CurveOptions = {}): string {
  if (!Array.isArray(losses) || losses.some((v) => typeof v !== 'number')) throw new LoraTypeError('losses: expected an array of numbers');
  checkOptions(opts, ['title', 'width', 'height', 'logScale'], 'opts');
  const W = opts.width ?? 720;
  const H = opts.height ?? 420;
  const m = { l: 70, r: 20, t: 40, b: 50 };
  const pts = losses.map((v, i) => [i + 1, v] as const).filter(([, v]) => Number.isFinite(v));
  const log = (opts.logScale ?? pts.every(([, v]) => v > 0)) && pts.every(([, v]) => v > 0);
  const tf = (v: number) => (log ? Math.log10(v) : v);
  let lo = pts.reduce((a, [, v]) => Math.min(a, tf(v)), Infinity);
  let hi = pts.reduce((a, [, v]) => Math.max(a, tf(v)), -Infinity);
  if (!pts.length) [lo, hi] = [0, 1];
  if (log) [lo, hi] = [Math.floor(lo), Math.ceil(hi)];
  if (hi - lo < 1e-12) [lo, hi] = [lo - 1, hi + 1];
  const n = Math.max(1, losses.length);
  const x = (i: number) => m.l + ((i - 1) / Math.max(1, n - 1)) * (W - m.l - m.r);
  const y = (v: number) => H - m.b - ((tf(v) - lo) / (hi - lo)) * (H - m.t - m.b);
  const out: string[] = [];
  out.push(`<svg xmlns="http://www.w3.org/2000/svg" width="${W}" height="${H}" viewBox="0 0 ${W} ${H}" font-family="sans-serif" font-size="12">`);
  out.push(`<rect width="${W}" height="${H}" fill="white"/>`);
  if (opts.title) out.push(`<text x="${W / 2}" y="24" text-anchor="middle" font-size="15">${esc(opts.title)}</text>`);
  // y grid and labels
  const yTicks: number[] = [];
  if (log) for (let e = lo; e <= hi; e++) yTicks.push(10 ** e);
  else for (let k = 0; k <= 5; k++) yTicks.push(lo + ((hi - lo) * k) / 5);
  for (const v of yTicks) {
    const yy = y(v).toFixed(1);
    out.push(`<line x1="${m.l}" y1="${yy}" x2="${W - m.r}" y2="${yy}" stroke="#ddd"/>`);
    out.push(`<text x="${m.l - 6}" y="${yy}" text-anchor="end" dominant-baseline="middle">${fmt(v)}</text>`);
  }
  // x ticks
  for (let k = 0; k <= 5; k++) {
    const step = Math.round(1 + ((n - 1) * k) / 5);
    const xx = x(step).toFixed(1);
    out.push(`<line x1="${xx}" y1="${H - m.b}" x2="${xx}" y2="${H - m.b + 5}" stroke="#333"/>`);
    out.push(`<text x="${xx}" y="${H - m.b + 18}" text-anchor="middle">${step}</text>`);
  }
  out.push(`<rect x="${m.l}" y="${m.t}" width="${W - m.l - m.r}" height="${H - m.t - m.b}" fill="none" stroke="#333"/>`);
  out.push(`<text x="${(m.l + W - m.r) / 2}" y="${H - 12}" text-anchor="middle">step</text>`);
  out.push(`<text x="16" y="${(m.t + H - m.b) / 2}" text-anchor="middle" transform="rotate(-90 16 ${(m.t + H - m.b) / 2})">loss${log ? ' (log scale)' : ''}</text>`);
  if (pts.length) {
    const d = pts.map(([i, v], k) => `${k ? 'L' : 'M'}${x(i).toFixed(1)},${y(v).toFixed(1)}`).join('');
    out.push(`<path d="${d}" fill="none" stroke="#1f77b4" stroke-width="1.5"/>`);
  }
  out.push('</svg>');
  return out.join('\n') + '\n';
}
