/** Builds the LoraLayer for a module kind. */
import { LoraTypeError, StateError } from '../errors';
import { LoraConv2d } from '../layers/conv2d';
import { LoraEmbedding } from '../layers/embedding';
import { LoraLayer } from '../layers/lora_layer';
import { LoraLinear } from '../layers/linear';
import { NormalizedModule, hasData, hasWeight } from './modules';

export function createLayer(m: NormalizedModule): LoraLayer {
  if (!hasWeight(m.weight)) throw new StateError(`module '${m.name}': has only a shape; LoRA layers need its weight tensor`);
  const bias = m.bias && hasData(m.bias) ? m.bias : null;
  if (m.kind === 'linear') return new LoraLinear({ weight: m.weight, bias, fanInFanOut: false });
  if (!hasData(m.weight)) throw new LoraTypeError(`module '${m.name}': a ${m.kind} layer needs a float weight, not a QuantizedTensor`);
  switch (m.kind) {
    case 'conv1d':
      return new LoraLinear({ weight: m.weight, bias, fanInFanOut: true });
    case 'embedding':
      return new LoraEmbedding({ weight: m.weight, paddingIdx: m.options.paddingIdx ?? null });
    case 'conv2d':
      return new LoraConv2d({ weight: m.weight, bias, stride: m.options.stride, padding: m.options.padding, dilation: m.options.dilation, groups: m.options.groups });
    default:
      throw new LoraTypeError(`module '${m.name}': kind ${m.kind} cannot take LoRA`);
  }
}
