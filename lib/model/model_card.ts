/** The README.md model card peft writes next to an adapter (library_name, tags, framework versions). */
import { PEFT_FORMAT_VERSION, ResolvedLoraConfig } from './config';

export function modelCard(c: ResolvedLoraConfig, lorakitVersion: string): string {
  const base = c.baseModelNameOrPath ?? '';
  const tags = [`base_model:adapter:${base}`, 'lora', 'lorakit'].sort();
  const yaml = [
    '---',
    `base_model: '${base.replace(/'/g, "''")}'`,
    'library_name: peft',
    ...(c.taskType === 'CAUSAL_LM' ? ['pipeline_tag: text-generation'] : []),
    'tags:',
    ...tags.map((t) => `- '${t.replace(/'/g, "''")}'`),
    '---',
  ];
  return [
    ...yaml,
    '',
    '# LoRA adapter',
    '',
    `A LoRA adapter (r=${c.r}, lora_alpha=${c.loraAlpha}) in peft's format, written by lorakit.`,
    'Load it with `PeftModel.from_pretrained(base_model, <this directory>)` in Python, or',
    '`LoraModel.fromPretrained(modules, <this directory>)` in Node.js.',
    '',
    '### Framework versions',
    '',
    `- PEFT ${PEFT_FORMAT_VERSION} (file format)`,
    `- lorakit ${lorakitVersion}`,
    '',
  ].join('\n');
}
