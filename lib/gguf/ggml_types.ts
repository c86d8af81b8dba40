/**
 * ggml's tensor types as GGUF stores them: the type id, the block of values one unit encodes and
 * that unit's byte size (ggml's type_traits; gguf-py's GGML_QUANT_SIZES).
 * A tensor of ne[0] values per row takes ne[0] / blockSize · typeSize bytes per row.
 */
import { LoraRangeError, LoraTypeError } from '../errors';

export interface GgmlTypeInfo {
  readonly id: number;
  readonly name: string;
  /** Values per block (1 for plain element types). */
  readonly blockSize: number;
  /** Bytes per block. */
  readonly typeSize: number;
}

const QK_K = 256;
const TABLE: Array<[number, string, number, number]> = [
  [0, 'F32', 1, 4], [1, 'F16', 1, 2], [2, 'Q4_0', 32, 18], [3, 'Q4_1', 32, 20], [6, 'Q5_0', 32, 22], [7, 'Q5_1', 32, 24],
  [8, 'Q8_0', 32, 34], [9, 'Q8_1', 32, 40], [10, 'Q2_K', QK_K, 84], [11, 'Q3_K', QK_K, 110], [12, 'Q4_K', QK_K, 144],
  [13, 'Q5_K', QK_K, 176], [14, 'Q6_K', QK_K, 210], [15, 'Q8_K', QK_K, 292], [16, 'IQ2_XXS', QK_K, 66], [17, 'IQ2_XS', QK_K, 74],
  [18, 'IQ3_XXS', QK_K, 98], [19, 'IQ1_S', QK_K, 50], [20, 'IQ4_NL', 32, 18], [21, 'IQ3_S', QK_K, 110], [22, 'IQ2_S', QK_K, 82],
  [23, 'IQ4_XS', QK_K, 136], [24, 'I8', 1, 1], [25, 'I16', 1, 2], [26, 'I32', 1, 4], [27, 'I64', 1, 8], [28, 'F64', 1, 8],
  [29, 'IQ1_M', QK_K, 56], [30, 'BF16', 1, 2], [34, 'TQ1_0', QK_K, 54], [35, 'TQ2_0', QK_K, 66], [39, 'MXFP4', 32, 17],
  [40, 'NVFP4', 64, 36], [41, 'Q1_0', 128, 18], [42, 'Q2_0', 64, 18],
];

const BY_ID = new Map<number, GgmlTypeInfo>(TABLE.map(([id, name, blockSize, typeSize]) => [id, { id, name, blockSize, typeSize }]));
const BY_NAME = new Map<string, GgmlTypeInfo>([...BY_ID.values()].map((t) => [t.name, t]));

/** The ggml type ids lorakit names in its API. */
export const GGML = {
  F32: 0, F16: 1, Q4_0: 2, Q4_1: 3, Q5_0: 6, Q5_1: 7, Q8_0: 8, Q4_K: 12, Q5_K: 13, Q6_K: 14, F64: 28, BF16: 30,
} as const;

/** Types lib/gguf can turn into f32 values. */
export const DEQUANTIZABLE: ReadonlySet<number> = new Set([0, 1, 2, 3, 6, 7, 8, 12, 13, 14, 28, 30]);
/** Types lib/gguf can write from f32 values. */
export const QUANTIZABLE: ReadonlySet<number> = new Set([0, 1, 2, 3, 6, 7, 8, 12, 13, 14, 30]);

/** The type with this id, or undefined. */
export function ggmlType(id: number): GgmlTypeInfo | undefined {
  return BY_ID.get(id);
}

/** The type with this name ('Q8_0', 'f16', ...), or undefined. */
export function ggmlTypeByName(name: string): GgmlTypeInfo | undefined {
  if (typeof name !== 'string') throw new LoraTypeError(`name: expected a ggml type name, got ${typeof name}`);
  return BY_NAME.get(name.toUpperCase());
}

export function typeName(id: number): string {
  return BY_ID.get(id)?.name ?? `type ${id}`;
}

/** Bytes of a tensor of `ne` (ggml order: ne[0] is the row length) in type `id`; checks the block fit. */
export function tensorBytes(id: number, ne: readonly number[], what = 'tensor'): number {
  const t = BY_ID.get(id);
  if (!t) throw new LoraTypeError(`${what}: unknown ggml type id ${id}`);
  const n0 = ne.length > 0 ? ne[0] : 1;
  if (n0 % t.blockSize !== 0) throw new LoraRangeError(`${what}: a row of ${n0} values is not a whole number of ${t.name} blocks (${t.blockSize} values each)`);
  let rows = 1;
  for (let i = 1; i < ne.length; i++) rows *= ne[i];
  const bytes = (n0 / t.blockSize) * t.typeSize * rows;
  if (!Number.isSafeInteger(bytes)) throw new LoraRangeError(`${what}: ${t.name} tensor of ne [${ne.join(', ')}] is too large`);
  return bytes;
}
