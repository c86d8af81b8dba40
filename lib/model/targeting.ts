/** peft's module-matching rules (tuners_utils.check_target_module_exists, get_pattern_key). */
import { LoraRangeError } from '../errors';
import { ResolvedLoraConfig } from './config';
import { NormalizedModule } from './modules';

function fullMatch(pattern: string, name: string, what: string): boolean {
  let re: RegExp;
  try {
    re = new RegExp(`^(?:${pattern})$`);
  } catch (e) {
    throw new LoraRangeError(`${what}: '${pattern}' is not a valid regular expression (${(e as Error).message})`);
  }
  return re.test(name);
}

/** A list matches a name exactly or as a '.'-suffix; a string is a regex matching the whole name. */
export function matchesModuleList(spec: string[] | string, name: string, what: string): boolean {
  if (typeof spec === 'string') return fullMatch(spec, name, what);
  return spec.some((k) => name === k || name.endsWith(`.${k}`));
}

function layerIndex(name: string, layersPattern: string | string[] | null): number | null {
  const patterns = layersPattern === null ? [] : typeof layersPattern === 'string' ? [layersPattern] : layersPattern;
  if (patterns.length === 0) {
    const m = /^.*\.[^.]*\.(\d+)\./.exec(name);
    return m ? Number(m[1]) : null;
  }
  for (const p of patterns) {
    const m = new RegExp(`^.*\\.(?:${p})\\.(\\d+)\\.`).exec(name);
    if (m) return Number(m[1]);
  }
  return null;
}

export function isExcluded(c: ResolvedLoraConfig, name: string): boolean {
  return c.excludeModules !== null && matchesModuleList(c.excludeModules, name, 'config.excludeModules');
}

/**
 * Whether `name` is targeted by the config's targetModules (a list or regex; 'all-linear' is
 * expanded by the caller), honouring layersToTransform as peft does: exact list hits skip it.
 */
export function isTargeted(c: ResolvedLoraConfig, targets: string[] | string, name: string): boolean {
  if (typeof targets === 'string') return fullMatch(targets, name, 'config.targetModules');
  if (targets.includes(name)) return true;
  if (!targets.some((k) => name.endsWith(`.${k}`))) return false;
  const layers = c.layersToTransform;
  const usingLayers = layers !== null && (typeof layers === 'number' || layers.length > 0);
  if (!usingLayers) return true;
  const idx = layerIndex(name, c.layersPattern);
  if (idx === null) return false;
  return typeof layers === 'number' ? idx === layers : layers.includes(idx);
}

/** The rank_pattern/alpha_pattern key that applies to `name` (peft: re.match(rf"(.*\.)?({key})$")). */
export function patternKey(patterns: Record<string, number>, name: string): string | null {
  for (const key of Object.keys(patterns)) {
    if (new RegExp(`^(?:.*\\.)?(?:${key})$`).test(name)) return key;
  }
  return null;
}

export function rankAndAlpha(c: ResolvedLoraConfig, name: string): { r: number; alpha: number } {
  const rk = patternKey(c.rankPattern, name);
  const ak = patternKey(c.alphaPattern, name);
  return { r: rk === null ? c.r : c.rankPattern[rk], alpha: ak === null ? c.loraAlpha : c.alphaPattern[ak] };
}

/** The target list after expanding 'all-linear': every linear and conv1d module except the output head (as peft). */
export function resolvedTargets(c: ResolvedLoraConfig, modules: Iterable<NormalizedModule>): string[] | string {
  if (c.targetModules !== 'all-linear') return c.targetModules!;
  return [...modules]
    .filter((m) => (m.kind === 'linear' || m.kind === 'conv1d') && !c.outputHead.some((h) => m.name === h || m.name.endsWith(`.${h}`)))
    .map((m) => m.name);
}
