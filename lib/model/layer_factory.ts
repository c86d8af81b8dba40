/** Builds the LoraLayer for a module kind. */
import { LoraTypeError, StateError } from '../errors';
import { LoraLayer } from '../layers/lora_layer';
import { LoraLinear } from '../layers/linear';
import { NormalizedModule, hasData } from './modules';

export function createLayer(m: NormalizedModule): LoraLayer {
  if (!hasData(m.weight)) throw new StateError(`module '${m.name}': has only a shape; LoRA layers need its weight tensor`);
  const bias = m.bias && hasData(m.bias) ? m.bias : null;
  switch (m.kind) {
    case 'linear':
      return new LoraLinear({ weight: m.weight, bias, fanInFanOut: false });
    case 'conv1d':
      return new LoraLinear({ weight: m.weight, bias, fanInFanOut: true });
    case 'embedding':
    case 'conv2d':
      throw new LoraTypeError(`module '${m.name}': LoRA on ${m.kind} modules is not available in this build yet (linear and conv1d are)`);
    default:
      throw new LoraTypeError(`module '${m.name}': kind ${m.kind} cannot take LoRA`);
  }
}
