// Stands in for what Grafana gives a panel plugin: the AMD loader with the shared modules (react,
// react-dom, @grafana/*, @emotion/css from npm), the theme, the options (the plugin's own defaults
// under the page's query), the size and the time range. It loads the built dist/module.js unchanged.
import * as emotionCss from '@emotion/css';
import * as grafanaData from '@grafana/data';
import * as grafanaUi from '@grafana/ui';
import React from 'react';
import * as ReactDOM from 'react-dom';
import { createRoot } from 'react-dom/client';
import * as jsxRuntime from 'react/jsx-runtime';

const { createTheme, dateTime, EventBusSrv, getDefaultTimeRange, LoadingState, standardEditorsRegistry, ThemeContext } =
  grafanaData;
const { GlobalStyles } = grafanaUi;

// Grafana registers its option editors at start-up; the plugin's options builder looks them up by id.
// The harness shows no editor, so each id gets an empty one.
const EDITORS = ['text', 'number', 'boolean', 'radio', 'select', 'multi-select', 'slider', 'color', 'unit', 'strings'];
standardEditorsRegistry.setInit(() => EDITORS.map((id) => ({ id, name: id, editor: () => null })));

type Factory = (...deps: unknown[]) => unknown;

const query = new URLSearchParams(window.location.search);
const moduleUrl = query.get('module') ?? '/dist/module.js';
const shared: Record<string, unknown> = {
  react: React,
  'react-dom': ReactDOM,
  'react/jsx-runtime': jsxRuntime,
  '@grafana/data': grafanaData,
  '@grafana/ui': grafanaUi,
  '@emotion/css': emotionCss,
  // Read by the plugin's public-path module to find its own assets.
  module: { uri: moduleUrl },
};

function fail(message: string) {
  (window as any).harnessError = message;
  document.getElementById('root')!.textContent = `harness: ${message}`;
}

function render(pluginModule: { plugin?: any }) {
  const plugin = pluginModule.plugin;
  if (!plugin?.panel) {
    return fail('dist/module.js exports no panel plugin');
  }
  const mode = query.get('theme') === 'light' ? 'light' : 'dark';
  const theme = createTheme({ colors: { mode } });
  const width = Number(query.get('width') ?? 900);
  const height = Number(query.get('height') ?? 700);
  const options: Record<string, unknown> = { ...plugin.defaults };
  for (const [k, v] of query) {
    if (k.startsWith('o.')) {
      const old = options[k.slice(2)];
      options[k.slice(2)] = typeof old === 'number' ? Number(v) : typeof old === 'boolean' ? v === 'true' : v;
    }
  }
  const to = dateTime(query.get('to') ?? new Date().toISOString());
  const from = dateTime(query.get('from') ?? new Date(to.valueOf() - 24 * 3600 * 1000).toISOString());
  const Panel = plugin.panel;
  const props = {
    id: 1,
    title: 'LLM Platform Ops',
    data: { state: LoadingState.Done, series: [], timeRange: getDefaultTimeRange() },
    timeRange: { from, to, raw: { from: from.toISOString(), to: to.toISOString() } },
    timeZone: 'utc',
    options,
    fieldConfig: { defaults: {}, overrides: [] },
    transparent: false,
    width,
    height,
    renderCounter: 0,
    eventBus: new EventBusSrv(),
    replaceVariables: (s: string) => s,
    onOptionsChange: () => {},
    onFieldConfigChange: () => {},
    onChangeTimeRange: () => {},
  };
  const box = {
    width: width + 16,
    padding: 8,
    background: theme.colors.background.primary,
    border: `1px solid ${theme.colors.border.weak}`,
    borderRadius: theme.shape.radius.default,
  };
  createRoot(document.getElementById('root')!).render(
    <ThemeContext.Provider value={theme}>
      <GlobalStyles />
      <div style={{ padding: 16, background: theme.colors.background.canvas, minHeight: '100vh' }}>
        <div style={box} data-testid="harness-panel" data-theme={mode}>
          <Panel {...props} />
        </div>
      </div>
    </ThemeContext.Provider>
  );
  (window as any).harnessOptions = options;
}

// Grafana loads plugins with SystemJS's AMD support; one define() call per module is all dist/module.js needs.
function define(deps: string[], factory: Factory) {
  const missing = deps.filter((d) => !(d in shared) && d !== 'exports');
  if (missing.length) {
    return fail(`dist/module.js needs modules the harness does not provide: ${missing.join(', ')}`);
  }
  const exports: Record<string, unknown> = {};
  const result = factory(...deps.map((d) => (d === 'exports' ? exports : shared[d])));
  render((result as object) ?? exports);
}
define.amd = true;
(window as any).define = define;

const script = document.createElement('script');
script.src = moduleUrl;
script.onerror = () => fail(`could not load ${moduleUrl}`);
document.head.appendChild(script);
