// The scaffold's config, minus the recorded ops API answers (src/__fixtures__) its `**/*.json` copy would ship.
import CopyWebpackPlugin from 'copy-webpack-plugin';
import type { Configuration } from 'webpack';

import { copyFilePatterns } from './.config/bundler/copyFiles.ts';
import grafanaConfig, { type Env } from './.config/webpack/webpack.config.ts';

const config = async (env: Env): Promise<Configuration> => {
  const base = await grafanaConfig(env);
  const patterns = copyFilePatterns.map((p) =>
    p.from === '**/*.json' ? { ...p, globOptions: { ignore: ['**/__fixtures__/**'] } } : p
  );
  return {
    ...base,
    plugins: (base.plugins ?? []).map((p) =>
      p instanceof CopyWebpackPlugin ? new CopyWebpackPlugin({ patterns }) : p
    ),
  };
};

export default config;
