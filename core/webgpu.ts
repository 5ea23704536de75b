/**
 * WebGPU in Node: Dawn's binding (npm `webgpu`) gives `navigator.gpu`, on which
 * tfjs's `webgpu` backend runs, on Vulkan, Metal or D3D12 (any NVIDIA, AMD, Intel or Apple
 * GPU, no CUDA). Without a GPU, SwiftShader's Vulkan driver (Debian's chromium-common
 * ships it) gives a software adapter: slow, but the same WGSL, so the GPU path is tested on
 * any machine. This file finds the adapter and says what it is; core/backend.ts decides
 * whether it runs.
 *
 * Env: SINKLM_NO_WEBGPU=1 hides WebGPU; VK_ICD_FILENAMES / VK_DRIVER_FILES pick the Vulkan
 * driver as the Vulkan loader reads them (left alone when set).
 */
import * as fs from 'node:fs';

export interface AdapterInfo {
  vendor: string;
  architecture: string;
  device: string;
  description: string;
  /** A software (CPU) adapter: SwiftShader, llvmpipe/lavapipe, or one the browser calls a fallback. */
  software: boolean;
  /** The Vulkan driver file sinklm pointed the loader at, when it did (SwiftShader's). */
  driver?: string;
  limits: {
    maxStorageBufferBindingSize: number;
    maxBufferSize: number;
    maxComputeWorkgroupStorageSize: number;
    maxComputeInvocationsPerWorkgroup: number;
  };
  features: string[];
}

export interface WebGPUProbe {
  ok: boolean;
  adapter?: AdapterInfo;
  /** Why there is no (usable) adapter. */
  error?: string;
}

/** Where Debian's chromium-common (and Chromium builds generally) keep SwiftShader's Vulkan driver. */
export const SWIFTSHADER_ICDS = ['/usr/lib/chromium/vk_swiftshader_icd.json', '/usr/lib/chromium-browser/vk_swiftshader_icd.json', '/opt/google/chrome/vk_swiftshader_icd.json'];

export const WEBGPU_HOWTO = 'a GPU with a Vulkan (Linux), Metal or D3D12 driver; without one, SwiftShader: apt-get install chromium-common libvulkan1';

type GPUish = { requestAdapter(o?: object): Promise<AdapterLike | null> };
interface AdapterLike {
  info: { vendor: string; architecture: string; device: string; description: string; isFallbackAdapter?: boolean };
  isFallbackAdapter?: boolean;
  limits: Record<string, number>;
  features: Set<string>;
}
interface DawnModule {
  create(flags: string[]): GPUish;
  globals: Record<string, unknown>;
}

type Attempt = { gpu: GPUish; adapter: AdapterLike | null; printed: string; driver?: string };
let found: { probe: WebGPUProbe; software: boolean; first?: Attempt; chosen?: Attempt; dawn?: DawnModule } | undefined;

function describe(a: AdapterLike, driver?: string): AdapterInfo {
  const i = a.info;
  const text = `${i.vendor} ${i.architecture} ${i.device} ${i.description}`;
  return {
    vendor: i.vendor,
    architecture: i.architecture,
    device: i.device,
    description: i.description,
    software: !!(i.isFallbackAdapter ?? a.isFallbackAdapter) || /swiftshader|llvmpipe|lavapipe|software/i.test(text),
    driver,
    limits: {
      maxStorageBufferBindingSize: a.limits.maxStorageBufferBindingSize!,
      maxBufferSize: a.limits.maxBufferSize!,
      maxComputeWorkgroupStorageSize: a.limits.maxComputeWorkgroupStorageSize!,
      maxComputeInvocationsPerWorkgroup: a.limits.maxComputeInvocationsPerWorkgroup!,
    },
    features: [...a.features].sort(),
  };
}

/** What Dawn wrote to stderr while it looked (driver warnings), as one line for a reason. */
function dawnWarnings(text: string): string {
  return text
    .split('\n')
    .map((l) => l.trim())
    .filter((l) => l && !l.startsWith('at ') && !l.startsWith('- While'))
    .join('; ');
}

/**
 * Finds a WebGPU adapter once per process. With `software`, a machine whose drivers give
 * none (no GPU) gets SwiftShader's when its driver file is installed. `capture` runs the
 * search with stderr captured (Dawn prints driver warnings there) and returns what was written.
 */
export async function probeWebGPU(software: boolean, capture: <T>(f: () => Promise<T>) => Promise<[T, string]>): Promise<WebGPUProbe> {
  if (found && (found.probe.ok || found.software || !software)) return found.probe;
  if (process.env.SINKLM_NO_WEBGPU && process.env.SINKLM_NO_WEBGPU !== '0') return (found = { probe: { ok: false, error: 'hidden by SINKLM_NO_WEBGPU' }, software: true }).probe;
  let dawn = found?.dawn;
  try {
    dawn ??= (await import('webgpu')) as unknown as DawnModule;
  } catch (e) {
    const err = e as NodeJS.ErrnoException;
    const why = err?.code === 'ERR_MODULE_NOT_FOUND' ? 'the npm package webgpu is not installed' : `Dawn cannot be loaded: ${String(err?.message ?? e).split('\n')[0]}`;
    return (found = { probe: { ok: false, error: why }, software: true }).probe;
  }
  process.env.XDG_RUNTIME_DIR ??= '/tmp';
  const attempt = async (driver?: string): Promise<Attempt> => {
    const gpu = dawn.create([]);
    const [adapter, printed] = await capture(() => gpu.requestAdapter({ powerPreference: 'high-performance' }));
    return { gpu, adapter, printed, driver };
  };
  const first = found?.first ?? (await attempt());
  let chosen = first;
  // Dawn reads the Vulkan loader's settings when an instance is created: a second instance,
  // after pointing the loader at SwiftShader's driver, finds it.
  const icd = SWIFTSHADER_ICDS.find((f) => fs.existsSync(f));
  if (software && !first.adapter && !process.env.VK_ICD_FILENAMES && !process.env.VK_DRIVER_FILES && icd) {
    process.env.VK_ICD_FILENAMES = icd;
    chosen = await attempt(icd);
  }
  if (!chosen.adapter) {
    const said = [first, chosen].filter((x, i) => i === 0 || x !== first).map((x) => dawnWarnings(x.printed)).filter(Boolean).join('; ');
    const probe = { ok: false, error: `no WebGPU adapter${said ? ` (Dawn: ${said})` : ''}; needs ${WEBGPU_HOWTO}` };
    return (found = { probe, software, first, dawn }).probe;
  }
  return (found = { probe: { ok: true, adapter: describe(chosen.adapter, chosen.driver) }, software, first, chosen, dawn }).probe;
}

/**
 * Installs the adapter's `navigator.gpu` (and WebGPU's global constants) for tfjs's webgpu
 * backend, which must be imported after this.
 */
export function installNavigatorGpu(): void {
  if (!found?.chosen?.adapter || !found.dawn) throw new Error('probeWebGPU found no adapter');
  const g = globalThis as unknown as { navigator?: { gpu?: unknown } };
  for (const [k, v] of Object.entries(found.dawn.globals)) if (!(k in globalThis)) Object.defineProperty(globalThis, k, { value: v, configurable: true, writable: true });
  if (!g.navigator) Object.defineProperty(globalThis, 'navigator', { value: {}, configurable: true, writable: true });
  Object.defineProperty(g.navigator, 'gpu', { value: found.chosen.gpu, configurable: true });
}

/** One line naming an adapter: "nvidia / hopper (NVIDIA: 580.159.04)", "google / swiftshader (software)". */
export function adapterLine(a: AdapterInfo): string {
  const what = [a.description || a.device, a.software ? 'software adapter' : ''].filter(Boolean).join(', ');
  return `${a.vendor || '?'} / ${a.architecture || a.device || '?'}${what ? ` (${what})` : ''}`;
}
