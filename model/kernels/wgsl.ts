/**
 * How sinklm's WGSL kernels run on tfjs's webgpu backend. tfjs's own programs
 * (runWebGPUProgram) have one output each and generate their bindings; sinklm's kernels
 * need several outputs (the attention's context and log-sum-exp, AdamW's parameters and
 * both moments), so each is a compute shader written whole, dispatched here into the
 * backend's own command encoder and compute pass, on the backend's own buffers: tensors in
 * and out are ordinary tfjs tensors, the kernels are recorded in order with tfjs's, and
 * nothing is read back.
 *
 * A shader declares its bindings in one order: the outputs (read_write), then the inputs
 * (read), each `array<f32>` or `array<i32>` (kernel(): `outputs` and `inputs`). Sizes are
 * compiled in as constants, so each shape gets its pipeline once (cached by source).
 */
import * as tf from '@tensorflow/tfjs-core';
import { countDispatch } from '../../core/backend.js';

/** The subset of tfjs's WebGPUBackend these kernels use (its fields are not in its public types). */
export interface WebGPUBackendish {
  device: GPUDeviceish;
  tensorMap: { get(id: object): { resource?: unknown; dtype: string } };
  makeTensorInfo(shape: number[], dtype: tf.DataType): tf.TensorInfo;
  uploadToGPU(id: object): void;
  commandQueueOwnedIds: WeakSet<object>;
  ensureCommandEncoderReady(): void;
  endComputePassEncoder(): void;
  submitQueue(): void;
  commandEncoder: { beginComputePass(d: object): ComputePassish };
  computePassEncoder: ComputePassish | null;
  dispatchCountInPass: number;
  activeTimers?: { name: string; query: unknown }[] | null;
  supportTimestampQuery?: boolean;
  querySet?: unknown;
  querySetCount?: number;
  getQueryTime(): Promise<number>;
}
interface GPUDeviceish {
  createShaderModule(d: { code: string; label?: string }): unknown;
  createComputePipeline(d: object): { getBindGroupLayout(i: number): unknown };
  createBindGroup(d: object): unknown;
  createQuerySet(d: object): unknown;
  limits: Record<string, number>;
}
interface ComputePassish {
  setPipeline(p: unknown): void;
  setBindGroup(i: number, g: unknown): void;
  dispatchWorkgroups(x: number, y?: number, z?: number): void;
  end(): void;
}

export interface Binding {
  name: string;
  type: 'f32' | 'i32';
}

export interface KernelSpec {
  /** A name for Dawn's messages and profiles. */
  label: string;
  /** WGSL after the bindings: at least `@compute ... fn main(...)`; it must use every binding. */
  body: string;
  inputs: tf.TensorInfo[];
  /** Input names, in the order of `inputs`. */
  inputNames: string[];
  outputs: { name: string; shape: number[]; dtype?: 'float32' | 'int32' }[];
  /** Workgroups in x, y, z. */
  grid: [number, number, number];
  /** Existing tensors to write instead of new ones (by output index). */
  into?: (tf.TensorInfo | undefined)[];
}

const pipelines = new WeakMap<object, Map<string, { getBindGroupLayout(i: number): unknown }>>();

const wgslType = (dtype: string) => (dtype === 'int32' || dtype === 'bool' ? 'i32' : 'f32');

/** The source of a kernel: its bindings, then its body. */
export function shaderSource(spec: Pick<KernelSpec, 'body' | 'inputNames' | 'outputs'>, inputTypes: string[]): string {
  const outs = spec.outputs.map((o, i) => `@group(0) @binding(${i}) var<storage, read_write> ${o.name}: array<${wgslType(o.dtype ?? 'float32')}>;`);
  const ins = spec.inputNames.map((n, i) => `@group(0) @binding(${spec.outputs.length + i}) var<storage, read> ${n}: array<${inputTypes[i]}>;`);
  return [...outs, ...ins, spec.body].join('\n');
}

/** Records one kernel into the backend's current compute pass; returns its outputs. */
export function dispatch(backend: WebGPUBackendish, spec: KernelSpec): tf.TensorInfo[] {
  const bindings = spec.outputs.length + spec.inputs.length;
  const limit = backend.device.limits.maxStorageBuffersPerShaderStage ?? 8;
  if (bindings > limit) throw new Error(`${spec.label}: ${bindings} storage buffers, over the device's ${limit} per shader`);
  const outputs = spec.outputs.map((o, i) => spec.into?.[i] ?? backend.makeTensorInfo(o.shape, o.dtype ?? 'float32'));
  for (const t of [...outputs, ...spec.inputs]) backend.uploadToGPU(t.dataId);
  const code = shaderSource(spec, spec.inputs.map((t) => wgslType(backend.tensorMap.get(t.dataId).dtype)));
  let cache = pipelines.get(backend.device);
  if (!cache) pipelines.set(backend.device, (cache = new Map()));
  let pipeline = cache.get(code);
  if (!pipeline) {
    const module = backend.device.createShaderModule({ code, label: spec.label });
    pipeline = backend.device.createComputePipeline({ compute: { module, entryPoint: 'main' }, layout: 'auto', label: spec.label });
    cache.set(code, pipeline);
  }
  const entries = [...outputs, ...spec.inputs].map((t, i) => ({ binding: i, resource: { buffer: backend.tensorMap.get(t.dataId).resource } }));
  for (const t of [...outputs, ...spec.inputs]) backend.commandQueueOwnedIds.add(t.dataId);
  const bindGroup = backend.device.createBindGroup({ layout: pipeline.getBindGroupLayout(0), entries });
  backend.ensureCommandEncoderReady();
  // Under tf.profile each dispatch gets a pass of its own with timestamps, as tfjs's programs do.
  const timed = backend.activeTimers != null && !!backend.supportTimestampQuery;
  if (timed) {
    backend.endComputePassEncoder();
    backend.querySet ??= backend.device.createQuerySet({ type: 'timestamp', count: backend.querySetCount ?? 2 });
    backend.computePassEncoder = backend.commandEncoder.beginComputePass({
      timestampWrites: { querySet: backend.querySet, beginningOfPassWriteIndex: 0, endOfPassWriteIndex: 1 },
    });
  }
  backend.computePassEncoder ??= backend.commandEncoder.beginComputePass({});
  backend.computePassEncoder.setPipeline(pipeline);
  backend.computePassEncoder.setBindGroup(0, bindGroup);
  backend.computePassEncoder.dispatchWorkgroups(...spec.grid);
  backend.dispatchCountInPass++;
  countDispatch();
  if (timed) {
    backend.endComputePassEncoder();
    backend.activeTimers!.push({ name: spec.label, query: backend.getQueryTime() });
  } else if ((tf.env().get('WEBGPU_DEFERRED_SUBMIT_BATCH_SIZE') as number) <= backend.dispatchCountInPass) {
    backend.endComputePassEncoder();
    backend.submitQueue();
  }
  return outputs;
}

/** WebGPU's per-dimension workgroup limit (the spec's minimum, which every adapter has). */
export const MAX_GROUPS = 65535;

/**
 * A grid of `n` workgroups as x * y (x <= 65535), and the WGSL expression of a workgroup's
 * flat index in it (`wid` is the builtin workgroup_id).
 */
export function flatGrid(n: number): { grid: [number, number, number]; index: string } {
  const x = Math.min(Math.max(n, 1), MAX_GROUPS);
  return { grid: [x, Math.ceil(Math.max(n, 1) / x), 1], index: `(wid.y * ${x}u + wid.x)` };
}

/** A float literal WGSL accepts (always with a point or exponent). */
export function f32(v: number): string {
  if (!Number.isFinite(v)) throw new Error(`not a finite constant: ${v}`);
  const s = String(Math.fround(v));
  return /[.eE]/.test(s) ? s : `${s}.0`;
}
