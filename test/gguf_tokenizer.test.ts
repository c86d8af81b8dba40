/**
 * tokenizer.json → GGUF tokenizer keys, checked by how node-llama-cpp (llama.cpp) then tokenizes
 * text: a byte-level BPE (GPT-2 style, Llama 3's pre-tokenizer regex → `gpt2` / `llama-bpe`) and a
 * SentencePiece-style BPE with byte_fallback (→ `llama`, scores by merge priority), each small
 * enough that the expected tokens can be worked out by hand.
 */
import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';
import { convertModelToGguf } from '../lib/gguf/convert_model';
import { GgufReader } from '../lib/gguf/reader';
import { LlamaRuntime } from './helpers/llama_runtime';
import { writeSyntheticModel } from './helpers/synthetic_hf';

const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'lorakit-gguf-tok-'));
const llama = new LlamaRuntime();
afterAll(async () => {
  await llama.close();
  fs.rmSync(dir, { recursive: true, force: true });
});

const LLAMA3_SPLIT = "(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}{1,3}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+";

/** GPT-2's byte → printable character map (bytes_to_unicode). */
function byteChars(): string[] {
  const bs: number[] = [];
  for (let b = 33; b <= 126; b++) bs.push(b);
  for (let b = 161; b <= 172; b++) bs.push(b);
  for (let b = 174; b <= 255; b++) bs.push(b);
  const cs = [...bs];
  let n = 0;
  for (let b = 0; b < 256; b++) if (!bs.includes(b)) [bs[bs.length], cs[cs.length]] = [b, 256 + n++];
  const out: string[] = [];
  bs.forEach((b, i) => (out[b] = String.fromCodePoint(cs[i])));
  return out;
}

async function convertWith(name: string, tokenizer: unknown, tokenizerConfig?: unknown): Promise<string> {
  const src = path.join(dir, name);
  writeSyntheticModel('llama', src, 288);
  fs.writeFileSync(path.join(src, 'tokenizer.json'), JSON.stringify(tokenizer));
  if (tokenizerConfig) fs.writeFileSync(path.join(src, 'tokenizer_config.json'), JSON.stringify(tokenizerConfig));
  const out = path.join(dir, `${name}.gguf`);
  const warnings: string[] = [];
  await convertModelToGguf({ model: src, out, outtype: 'f32', warn: (m) => warnings.push(m) });
  expect(warnings).toEqual([]);
  return out;
}

test('byte-level BPE (Llama 3 style): gpt2 model, llama-bpe pre-tokenizer, merges applied as transformers would', async () => {
  const chars = byteChars();
  const vocab: Record<string, number> = {};
  chars.forEach((c, b) => (vocab[c] = b));
  const G = chars[32]; // 'Ġ', the byte-level space
  const merges = ['h e', 'l l', 'he ll', 'hell o', `${G} w`, 'o r', `${G}w or`, 'l d', `${G}wor ld`];
  merges.forEach((m, i) => (vocab[m.replace(' ', '')] = 256 + i));
  const file = await convertWith('bpe', {
    model: { type: 'BPE', vocab, merges, byte_fallback: false, ignore_merges: false },
    added_tokens: [{ id: 265, content: '<|begin_of_text|>', special: true }, { id: 266, content: '<|end_of_text|>', special: true }],
    pre_tokenizer: { type: 'Sequence', pretokenizers: [{ type: 'Split', pattern: { Regex: LLAMA3_SPLIT }, behavior: 'Isolated' }, { type: 'ByteLevel', add_prefix_space: false }] },
  }, { bos_token: '<|begin_of_text|>', eos_token: '<|end_of_text|>' });
  const r = new GgufReader(file);
  expect(r.getString('tokenizer.ggml.model')).toBe('gpt2');
  expect(r.getString('tokenizer.ggml.pre')).toBe('llama-bpe');
  expect((r.get('tokenizer.ggml.tokens') as { items: string[] }).items.length).toBe(288);
  expect((r.get('tokenizer.ggml.merges') as { items: string[] }).items).toEqual(merges);
  r.close();
  expect(await llama.tokenize(file, 'hello world')).toEqual([259, 264]); // 'hello', 'Ġworld'
  expect(await llama.tokenize(file, 'hi world!')).toEqual([104, 105, 264, 33]);
  expect(await llama.tokenize(file, '<|end_of_text|>', true)).toEqual([266]);
});

test('SentencePiece-style BPE with byte_fallback: llama model, pieces merged by score, bytes for the rest', async () => {
  const vocab: Record<string, number> = { '<unk>': 0, '<s>': 1, '</s>': 2 };
  for (let b = 0; b < 256; b++) vocab[`<0x${b.toString(16).toUpperCase().padStart(2, '0')}>`] = 3 + b;
  const pieces = ['▁', 'h', 'e', 'l', 'o', 'w', 'r', 'd', '▁h', 'll', '▁he', '▁hell', '▁hello', '▁w', 'or', '▁wor', 'ld', '▁world'];
  pieces.forEach((p, i) => (vocab[p] = 259 + i));
  const file = await convertWith('spm', {
    model: { type: 'BPE', vocab, merges: [], byte_fallback: true, unk_token: '<unk>' },
    added_tokens: [{ id: 0, content: '<unk>', special: true }, { id: 1, content: '<s>', special: true }, { id: 2, content: '</s>', special: true }],
  });
  const r = new GgufReader(file);
  expect(r.getString('tokenizer.ggml.model')).toBe('llama');
  const types = (r.get('tokenizer.ggml.token_type') as { items: Int32Array }).items;
  expect([types[0], types[1], types[3 + 10], types[259 + 12]]).toEqual([2, 3, 6, 1]); // unknown, control, byte, normal
  r.close();
  expect(await llama.tokenize(file, 'hello world')).toEqual([259 + 12, 259 + 17]); // '▁hello', '▁world'
  expect(await llama.tokenize(file, 'hex')).toEqual([259 + 10, 3 + 0x78]); // '▁he', then the byte <0x78> ('x' has no piece)
});
