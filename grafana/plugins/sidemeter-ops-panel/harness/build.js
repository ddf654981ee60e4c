// Bundles harness/src/harness.tsx with the npm builds of react, react-dom, @grafana/* and @emotion/css
// into harness/dist/, for tests/integration/test_panel_e2e.py.
const fs = require('fs');
const path = require('path');
const esbuild = require('esbuild');

// @grafana/ui fetches its icons from Grafana's public/build/img; the npm package ships them.
const icons = path.join(path.dirname(require.resolve('@grafana/ui/package.json')), 'dist', 'public', 'img');
fs.cpSync(icons, path.join(__dirname, 'dist', 'public', 'build', 'img'), { recursive: true });

esbuild
  .build({
    entryPoints: [path.join(__dirname, 'src', 'harness.tsx')],
    outfile: path.join(__dirname, 'dist', 'harness.js'),
    bundle: true,
    format: 'iife',
    platform: 'browser',
    target: 'es2020',
    minify: true,
    jsx: 'automatic',
    define: { 'process.env.NODE_ENV': '"production"', global: 'window' },
    loader: { '.svg': 'file', '.woff': 'file', '.woff2': 'file', '.ttf': 'file', '.png': 'file', '.eot': 'file' },
    logLevel: 'warning',
  })
  .then(() => console.log('harness/dist/harness.js built'))
  .catch(() => process.exit(1));
