// Zips dist/ as <plugin id>/ into <plugin id>-<version>.zip, the layout `grafana cli plugins install`
// and a copy into the plugins directory both expect.
const fs = require('fs');
const path = require('path');
const archiver = require('archiver');

const root = path.resolve(__dirname, '..');
const dist = path.join(root, 'dist');
const { version } = require(path.join(root, 'package.json'));
const pluginJson = path.join(dist, 'plugin.json');

if (!fs.existsSync(pluginJson)) {
  console.error('dist/plugin.json is missing: run `npm run build` first');
  process.exit(1);
}
const { id } = JSON.parse(fs.readFileSync(pluginJson, 'utf8'));
const out = path.join(root, `${id}-${version}.zip`);
const zip = archiver('zip', { zlib: { level: 9 } });
const stream = fs.createWriteStream(out);
stream.on('close', () => console.log(`${path.basename(out)}: ${zip.pointer()} bytes`));
zip.on('error', (err) => {
  console.error(err.message);
  process.exit(1);
});
zip.pipe(stream);
zip.directory(dist, id);
zip.finalize();
