// The typed library: everything the CLI does is importable from here.
export * from './core/errors.js';
export * from './core/config.js';
export * from './core/backend.js';
