/**
 * The exact merge and hot-swap rows of `bench()`: exact merge/unmerge (with side information)
 * against peft's merge/unmerge, and switchMerged (one pass) against exact unmerge + merge (two
 * passes), each pair timed alternately on one LoraLinear over the benchmark's W, with adapters
 * scaled to ‖ΔW‖/‖W‖ = REL_DELTA.
 */
import { FloatDType } from '../dtype';
import { LoraLinear } from '../layers/linear';
import { Tensor } from '../tensor';

export interface SwapTiming {
  /** Exact merge + unmerge, and peft's merge + unmerge (two passes over W each). */
  exact: { best: number; median: number };
  peft: { best: number; median: number };
  /** switchMerged a ⇄ b, and exact unmerge + merge of the other adapter. */
  swap: { best: number; median: number };
  unmergeMerge: { best: number; median: number };
  /** Side information of one merged adapter, bits per weight. */
  sideBits: number;
}

type Timer = { best: number; median: number };
/** ‖ΔW‖ / ‖W‖ of the adapters: trained LoRA adapters typically sit between 1% and 10%. */
export const REL_DELTA = 0.05;
type PairTimer = (a: () => void, b: () => void, minTime: number) => [Timer, Timer];

/** A LoraLinear over W with adapters a and b (seeds seed + 7, seed + 8) scaled to ‖ΔW‖/‖W‖ = REL_DELTA. */
function swapLayer(W: Tensor, r: number, seed: number): LoraLinear {
  const layer = new LoraLinear({ weight: W });
  const w = W.toFloat32Array();
  let ww = 0;
  for (let i = 0; i < w.length; i++) ww += w[i] * w[i];
  for (const [name, s] of [['a', seed + 7], ['b', seed + 8]] as const) {
    layer.addAdapter(name, { r, loraAlpha: r, initLoraWeights: false, seed: s, dtype: W.dtype as FloatDType });
    const delta = layer.getDeltaWeight(name);
    const dv = delta.toFloat32Array();
    delta.dispose();
    let dd = 0;
    for (let i = 0; i < dv.length; i++) dd += dv[i] * dv[i];
    layer.setScale(name, REL_DELTA / Math.sqrt(dd / (ww || 1) || 1));
  }
  return layer;
}

export function timeSwap(W: Tensor, r: number, minTime: number, seed: number, timePair: PairTimer): SwapTiming {
  const layer = swapLayer(W, r, seed);
  // peft's side on a copy of W: its unmerge drifts W (round(round(W + Δ) − Δ)), and an exact merge
  // of a drifted W needs ~5 times fewer corrections than of the original, which would flatter it.
  const Wp = W.clone();
  const peftLayer = swapLayer(Wp, r, seed);
  try {
    // Each side does a merge and its unmerge, so both leave W as they found it (exact) or nearly (peft).
    const [exact, peft] = timePair(
      () => {
        layer.merge({ adapterNames: ['a'] });
        layer.unmerge();
      },
      () => {
        peftLayer.merge({ adapterNames: ['a'], exact: false });
        peftLayer.unmerge();
      },
      minTime,
    );
    if (layer.merged) layer.unmerge();
    layer.merge({ adapterNames: ['a'] });
    const sideBits = (layer.mergeSideInfoBytes * 8) / W.numel;
    const other = () => (layer.mergedAdapters[0] === 'a' ? 'b' : 'a');
    const [swap, unmergeMerge] = timePair(
      () => layer.switchMerged([other()]),
      () => {
        const next = other();
        layer.unmerge();
        layer.merge({ adapterNames: [next] });
      },
      minTime,
    );
    layer.unmerge();
    return { exact, peft, swap, unmergeMerge, sideBits };
  } finally {
    layer.dispose();
    peftLayer.dispose();
    Wp.dispose();
  }
}
