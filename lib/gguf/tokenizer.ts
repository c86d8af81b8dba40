/**
 * The tokenizer keys a GGUF base needs (llama.cpp refuses a model without them):
 * - from tokenizer.json: byte-level BPE (GPT-2 style, as Llama 3 and Qwen2 ship it) → model `gpt2`
 *   with tokens, token types and merges, the pre-tokenizer named from its split regex; BPE with
 *   byte_fallback (SentencePiece-style Llama / Mistral / Gemma) → model `llama` with tokens, scores
 *   (−id: SentencePiece BPE vocabularies are ordered by merge priority) and types;
 * - otherwise a placeholder of exactly vocab_size tokens that llama.cpp accepts: `<unk>`, `<s>`,
 *   `</s>`, byte tokens `<0x00>`… (llama.cpp aborts without `<0x0A>`), then fillers.
 * Token types are llama.cpp's: 1 normal, 2 unknown, 3 control, 4 user-defined, 6 byte.
 */
import * as fs from 'fs';
import * as path from 'path';
import { AdapterError, LoraTypeError } from '../errors';
import { GgufKV, kv } from './metadata';

const NORMAL = 1, UNKNOWN = 2, CONTROL = 3, USER_DEFINED = 4, BYTE = 6;

interface TokenizerJson {
  model?: { type?: string; vocab?: Record<string, number>; merges?: Array<string | [string, string]>; byte_fallback?: boolean; unk_token?: string | null };
  added_tokens?: Array<{ id: number; content: string; special?: boolean }>;
  pre_tokenizer?: unknown;
}

// The split regexes of the byte-level BPE pre-tokenizers llama.cpp implements, by its name for them.
const PRE_TOKENIZERS: Array<[string, string]> = [
  ['llama-bpe', "(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}{1,3}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+"],
  ['qwen2', "(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+"],
  ['gpt-2', "'s|'t|'re|'ve|'m|'ll|'d| ?\\p{L}+| ?\\p{N}+| ?[^\\s\\p{L}\\p{N}]+|\\s+(?!\\S)|\\s+"],
];

function splitRegexes(node: unknown, out: string[] = []): string[] {
  if (Array.isArray(node)) node.forEach((n) => splitRegexes(n, out));
  else if (node && typeof node === 'object') {
    const o = node as Record<string, unknown>;
    const p = o.pattern as Record<string, unknown> | undefined;
    if (o.type === 'Split' && p && typeof p.Regex === 'string') out.push(p.Regex);
    if (o.pretokenizers) splitRegexes(o.pretokenizers, out);
  }
  return out;
}

function readJson(file: string): Record<string, unknown> | null {
  if (!fs.existsSync(file)) return null;
  try {
    return JSON.parse(fs.readFileSync(file, 'utf8')) as Record<string, unknown>;
  } catch (e) {
    throw new LoraTypeError(`${file}: not valid JSON (${(e as Error).message})`);
  }
}

/** bos/eos/unk/pad ids and add_bos from config.json and tokenizer_config.json. */
function specialKeys(config: Record<string, unknown>, tokCfg: Record<string, unknown> | null, ids: Map<string, number>, vocab: number): Array<[string, GgufKV]> {
  const out: Array<[string, GgufKV]> = [];
  const idOf = (key: string): number | undefined => {
    const v = config[`${key}_token_id`];
    const first = Array.isArray(v) ? v[0] : v;
    if (typeof first === 'number') return first;
    const t = tokCfg?.[`${key}_token`];
    const text = typeof t === 'string' ? t : t && typeof t === 'object' ? (t as { content?: string }).content : undefined;
    return text !== undefined ? ids.get(text) : undefined;
  };
  for (const key of ['bos', 'eos', 'unknown', 'padding'] as const) {
    const id = idOf(key === 'unknown' ? 'unk' : key === 'padding' ? 'pad' : key);
    if (id !== undefined && Number.isInteger(id) && id >= 0 && id < vocab) out.push([`tokenizer.ggml.${key}_token_id`, kv.u32(id)]);
  }
  if (typeof tokCfg?.add_bos_token === 'boolean') out.push(['tokenizer.ggml.add_bos_token', kv.bool(tokCfg.add_bos_token)]);
  if (typeof tokCfg?.add_eos_token === 'boolean') out.push(['tokenizer.ggml.add_eos_token', kv.bool(tokCfg.add_eos_token)]);
  return out;
}

/** The placeholder vocabulary: loads in llama.cpp, tokenizes nothing meaningful. */
export function placeholderVocab(vocab: number, config: Record<string, unknown>, warn: (m: string) => void = () => {}, arch = ''): Array<[string, GgufKV]> {
  if (!Number.isInteger(vocab) || vocab < 14) throw new AdapterError(`vocab_size ${vocab}: a placeholder vocabulary needs at least 14 tokens (llama.cpp requires the byte token <0x0A>)`);
  // llama.cpp aborts when text needs a byte it has no token for; UTF-8 never uses 0xF5-0xFF, so 248 tokens cover all text
  if (vocab < 3 + 0xf5)
    warn(`lorakit: vocab_size ${vocab} leaves no room for byte tokens from <0x${(vocab - 3).toString(16).toUpperCase()}>; llama.cpp aborts on text that needs them (token ids are fine)`);
  const tokens: string[] = ['<unk>', '<s>', '</s>'];
  const types: number[] = [UNKNOWN, CONTROL, CONTROL];
  for (let b = 0; b < 256 && tokens.length < vocab; b++) {
    tokens.push(`<0x${b.toString(16).toUpperCase().padStart(2, '0')}>`);
    types.push(BYTE);
  }
  while (tokens.length < vocab) {
    tokens.push(`<unused${tokens.length}>`);
    types.push(NORMAL);
  }
  // llama.cpp looks this token up by text for models named phi3 and aborts without it
  if (arch === 'phi3' && vocab > 3 + 0xf5) [tokens[vocab - 1], types[vocab - 1]] = ['<|endoftext|>', CONTROL];
  const ids = new Map(tokens.map((t, i) => [t, i]));
  const cfg = { bos_token_id: 1, eos_token_id: 2, unk_token_id: 0, ...config };
  return [
    ['tokenizer.ggml.model', kv.str('llama')],
    ['tokenizer.ggml.pre', kv.str('default')],
    ['tokenizer.ggml.tokens', kv.arr('string', tokens)],
    ['tokenizer.ggml.scores', kv.arr('f32', new Float32Array(vocab))],
    ['tokenizer.ggml.token_type', kv.arr('i32', types)],
    ...specialKeys(cfg, null, ids, vocab),
  ];
}

/**
 * Tokenizer keys for a model directory: from tokenizer.json when present, else the placeholder
 * (with a warning). `vocab` is config.json's vocab_size; the token list is padded to it.
 */
export function tokenizerKeys(dir: string, arch: string, vocab: number, config: Record<string, unknown>, warn: (m: string) => void): Array<[string, GgufKV]> {
  const file = path.join(dir, 'tokenizer.json');
  const tj = readJson(file) as TokenizerJson | null;
  if (!tj) {
    warn(`lorakit: ${dir} has no tokenizer.json; writing a placeholder vocabulary of ${vocab} tokens (the model loads and evaluates token ids, but text will not tokenize meaningfully)`);
    return placeholderVocab(vocab, config, warn, arch);
  }
  const tokCfg = readJson(path.join(dir, 'tokenizer_config.json'));
  const m = tj.model;
  if (!m || m.type !== 'BPE' || !m.vocab || typeof m.vocab !== 'object')
    throw new AdapterError(`${file}: model type '${m?.type ?? '?'}' is not converted (lorakit reads BPE tokenizers: byte-level as Llama 3 / Qwen2, or SentencePiece-style with byte_fallback)`);
  const tokens: string[] = [];
  const types: number[] = [];
  const set = (id: number, text: string, type: number) => {
    if (!Number.isInteger(id) || id < 0 || id >= Math.max(vocab, 1 << 24)) throw new AdapterError(`${file}: token '${text}' has id ${id} outside the vocabulary (vocab_size ${vocab})`);
    tokens[id] = text;
    types[id] = type;
  };
  const spm = m.byte_fallback === true;
  for (const [text, id] of Object.entries(m.vocab)) set(id, text, spm && /^<0x[0-9A-Fa-f]{2}>$/.test(text) ? BYTE : NORMAL);
  if (spm && typeof m.unk_token === 'string' && m.vocab[m.unk_token] !== undefined) types[m.vocab[m.unk_token]] = UNKNOWN;
  for (const t of tj.added_tokens ?? []) set(t.id, t.content, types[t.id] === UNKNOWN ? UNKNOWN : t.special ? CONTROL : USER_DEFINED);
  const n = Math.max(vocab, tokens.length);
  for (let i = 0; i < n; i++) {
    if (tokens[i] === undefined) {
      tokens[i] = `[PAD${i}]`;
      types[i] = USER_DEFINED;
    }
  }
  const ids = new Map(tokens.map((t, i) => [t, i]));
  const keys: Array<[string, GgufKV]> = [];
  if (spm) {
    keys.push(['tokenizer.ggml.model', kv.str('llama')], ['tokenizer.ggml.pre', kv.str('default')]);
    keys.push(['tokenizer.ggml.tokens', kv.arr('string', tokens)]);
    keys.push(['tokenizer.ggml.scores', kv.arr('f32', Float32Array.from(tokens, (_, i) => (types[i] === NORMAL ? -i : 0)))]);
    keys.push(['tokenizer.ggml.token_type', kv.arr('i32', types)]);
  } else {
    const regexes = splitRegexes(tj.pre_tokenizer);
    const pre = PRE_TOKENIZERS.find(([, re]) => regexes.includes(re))?.[0];
    if (!pre) warn(`lorakit: ${file}: the pre-tokenizer is not one lorakit recognises (llama-bpe, qwen2, gpt-2); writing 'default' (text may split differently from transformers)`);
    const merges = (m.merges ?? []).map((x) => (Array.isArray(x) ? x.join(' ') : x));
    keys.push(['tokenizer.ggml.model', kv.str('gpt2')], ['tokenizer.ggml.pre', kv.str(pre ?? 'default')]);
    keys.push(['tokenizer.ggml.tokens', kv.arr('string', tokens)]);
    keys.push(['tokenizer.ggml.token_type', kv.arr('i32', types)]);
    keys.push(['tokenizer.ggml.merges', kv.arr('string', merges)]);
  }
  keys.push(...specialKeys(config, tokCfg, ids, n));
  return keys;
}
