// force timezone to UTC to allow tests to work regardless of local timezone
process.env.TZ = 'UTC';

const base = require('./.config/jest.config');
const swc = base.transform['^.+\\.(t|j)sx?$'];

module.exports = {
  ...base,
  // d3-color and friends ship only .mjs, which @grafana/data imports.
  transform: { ...base.transform, '^.+\\.mjs$': swc },
  testPathIgnorePatterns: ['/node_modules/', '/dist/', '/harness/'],
};
