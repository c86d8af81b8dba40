/**
 * GELU (tanh approximation, as torch's gelu(approximate='tanh')) computed in TypeScript for the
 * demo network: lorakit's native side only has the LoRA linear ops. On cuda the values make a
 * round trip through the host.
 */
import { Tensor } from '../tensor';

const K = Math.sqrt(2 / Math.PI);
const C = 0.044715;

/** y = gelu(h); returns y and the f32 pre-activation values needed by geluBackward. */
export function gelu(h: Tensor): { y: Tensor; pre: Float32Array } {
  const pre = h.toFloat32Array();
  const out = new Float32Array(pre.length);
  for (let i = 0; i < pre.length; i++) {
    const x = pre[i];
    out[i] = 0.5 * x * (1 + Math.tanh(K * (x + C * x * x * x)));
  }
  return { y: Tensor.from(out, h.shape, { dtype: h.dtype, device: h.device }), pre };
}

/** dh = dy ⊙ gelu'(h). */
export function geluBackward(dy: Tensor, pre: Float32Array): Tensor {
  const d = dy.toFloat32Array();
  const g = new Float32Array(d.length); // fresh array: the native one may come from another realm (jest)
  for (let i = 0; i < g.length; i++) {
    const x = pre[i];
    const t = Math.tanh(K * (x + C * x * x * x));
    g[i] = d[i] * (0.5 * (1 + t) + 0.5 * x * (1 - t * t) * K * (1 + 3 * C * x * x));
  }
  return Tensor.from(g, dy.shape, { dtype: dy.dtype, device: dy.device });
}
