// Bundles src/ into ../actors/transport/static/ (committed, so Python users need no Node).
//   npm run build          one build
//   npm run watch          rebuild on change
import { build, context } from 'esbuild';
import { copyFile, mkdir, readdir, rm } from 'node:fs/promises';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

const here = dirname(fileURLToPath(import.meta.url));
const src = join(here, 'src');
const out = join(here, '..', 'actors', 'transport', 'static');
const watch = process.argv.includes('--watch');

const common = {
  bundle: true,
  minify: true,
  sourcemap: false,
  target: ['chrome100', 'firefox100', 'safari15'],
  legalComments: 'eof', // keeps livekit-client's licence notices in the bundle
  logLevel: 'info',
};
const jobs = [
  // Split so that livekit-client (dynamic import) loads only on the LiveKit path.
  {
    ...common,
    entryPoints: { app: join(src, 'main.js') },
    outdir: out,
    format: 'esm',
    splitting: true,
    chunkNames: 'lk-[hash]',
  },
  // Worklets run in AudioWorkletGlobalScope: one self-contained classic script.
  { ...common, entryPoints: [join(src, 'worklets.js')], outfile: join(out, 'worklets.js'), format: 'iife' },
];

await rm(out, { recursive: true, force: true });
await mkdir(out, { recursive: true });
for (const f of ['index.html', 'style.css']) await copyFile(join(src, f), join(out, f));
if (watch) {
  for (const job of jobs) await (await context(job)).watch();
} else {
  await Promise.all(jobs.map((job) => build(job)));
  console.log('static/:', (await readdir(out)).join(' '));
}
