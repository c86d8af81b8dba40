/**
 * Error classes. Every error lorakit throws is one of these, with a stable `code`; messages name
 * the offending argument and, for shapes, the expected and actual shapes.
 */

/** A value of the wrong kind: not a Tensor, not a number, wrong typed-array type. */
export class LoraTypeError extends TypeError {
  readonly code: string = 'LORAKIT_TYPE';
  override name = 'LoraTypeError';
}

/** A tensor of the wrong dtype for the operation. */
export class DTypeError extends TypeError {
  readonly code: string = 'LORAKIT_DTYPE';
  override name = 'DTypeError';
}

/** Shapes that do not fit together. */
export class ShapeError extends RangeError {
  readonly code: string = 'LORAKIT_SHAPE';
  override name = 'ShapeError';
}

/** A number out of its allowed range (r < 1, NaN scale, dropout outside [0, 1)). */
export class LoraRangeError extends RangeError {
  readonly code: string = 'LORAKIT_RANGE';
  override name = 'LoraRangeError';
}

/** An adapter name that is unknown, duplicated or not allowed in this state. */
export class AdapterError extends Error {
  readonly code: string = 'LORAKIT_ADAPTER';
  override name = 'AdapterError';
}

/** An operation that is invalid in the current state (disposed tensor, backward without forward). */
export class StateError extends Error {
  readonly code: string = 'LORAKIT_STATE';
  override name = 'StateError';
}

/** The native addon is missing or could not be loaded. */
export class NativeLoadError extends Error {
  readonly code: string = 'LORAKIT_NATIVE_LOAD';
  override name = 'NativeLoadError';
}

export function shapeStr(shape: readonly number[]): string {
  return `[${shape.join(', ')}]`;
}
