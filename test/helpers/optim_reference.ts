/** Plain float64 optimizer references (torch.optim.AdamW / SGD formulas) for the native steps. */

export interface AdamRefState {
  p: Float64Array;
  m: Float64Array;
  v: Float64Array;
  t: number;
}

export function adamwRefInit(p: ArrayLike<number>): AdamRefState {
  return { p: Float64Array.from(p), m: new Float64Array(p.length), v: new Float64Array(p.length), t: 0 };
}

export function adamwRefStep(
  s: AdamRefState,
  g: ArrayLike<number>,
  h: { lr: number; beta1: number; beta2: number; eps: number; weightDecay: number },
): void {
  s.t++;
  const bc1 = 1 - h.beta1 ** s.t;
  const bc2 = 1 - h.beta2 ** s.t;
  for (let i = 0; i < s.p.length; i++) {
    s.p[i] *= 1 - h.lr * h.weightDecay;
    s.m[i] = h.beta1 * s.m[i] + (1 - h.beta1) * g[i];
    s.v[i] = h.beta2 * s.v[i] + (1 - h.beta2) * g[i] * g[i];
    s.p[i] -= (h.lr / bc1) * (s.m[i] / (Math.sqrt(s.v[i]) / Math.sqrt(bc2) + h.eps));
  }
}

export interface SgdRefState {
  p: Float64Array;
  buf: Float64Array | null;
}

export function sgdRefStep(
  s: SgdRefState,
  g: ArrayLike<number>,
  h: { lr: number; momentum: number; dampening: number; nesterov: boolean; weightDecay: number },
): void {
  const first = s.buf === null;
  if (h.momentum !== 0 && first) s.buf = new Float64Array(s.p.length);
  for (let i = 0; i < s.p.length; i++) {
    let d = g[i] + h.weightDecay * s.p[i];
    if (h.momentum !== 0) {
      const b = first ? d : h.momentum * s.buf![i] + (1 - h.dampening) * d;
      s.buf![i] = b;
      d = h.nesterov ? d + h.momentum * b : b;
    }
    s.p[i] -= h.lr * d;
  }
}
