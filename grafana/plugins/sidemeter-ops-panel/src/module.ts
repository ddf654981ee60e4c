import { PanelPlugin } from '@grafana/data';

import { OpsPanel } from './components/OpsPanel';
import { defaultOptions, OpsPanelOptions } from './types';

export const plugin = new PanelPlugin<OpsPanelOptions>(OpsPanel).setNoPadding().setPanelOptions((builder) =>
  builder
    .addTextInput({
      path: 'apiUrl',
      name: 'Ops API URL',
      description: "The sidecar's ops API as the browser reaches it; its ops_cors_origins must allow this Grafana",
      defaultValue: defaultOptions.apiUrl,
    })
    .addNumberInput({
      path: 'refreshSeconds',
      name: 'Refresh interval (seconds)',
      description: 'How often the panel polls the ops API; 0 polls only on the dashboard refresh',
      defaultValue: defaultOptions.refreshSeconds,
      settings: { min: 0, integer: true },
    })
    .addTextInput({
      path: 'token',
      name: 'Ops token',
      description:
        'Bearer JWT with the ops role. Saved in the dashboard JSON (panels have no secure settings): ' +
        'use a short-lived, low-privilege token, or put the ops API behind a proxy that adds it',
      defaultValue: defaultOptions.token,
    })
    .addBooleanSwitch({ path: 'showHealth', name: 'Health', category: ['Sections'], defaultValue: true })
    .addBooleanSwitch({ path: 'showStats', name: 'Stats', category: ['Sections'], defaultValue: true })
    .addBooleanSwitch({ path: 'showServices', name: 'Services', category: ['Sections'], defaultValue: true })
    .addBooleanSwitch({ path: 'showTestConsole', name: 'Test console', category: ['Sections'], defaultValue: true })
    .addBooleanSwitch({ path: 'showRecent', name: 'Recent requests', category: ['Sections'], defaultValue: true })
    .addBooleanSwitch({ path: 'showQuotas', name: 'Quotas', category: ['Sections'], defaultValue: true })
    .addRadio({
      path: 'statsWindowMode',
      name: 'Stats window',
      category: ['Stats'],
      defaultValue: defaultOptions.statsWindowMode,
      settings: {
        options: [
          { value: 'dashboard', label: 'Dashboard time range' },
          { value: 'fixed', label: 'Fixed' },
        ],
      },
    })
    .addTextInput({
      path: 'statsWindow',
      name: 'Fixed window',
      description: 'A window /ops/stats accepts, e.g. 1h, 24h, 7d',
      category: ['Stats'],
      defaultValue: defaultOptions.statsWindow,
      showIf: (o) => o.statsWindowMode === 'fixed',
    })
    .addNumberInput({
      path: 'recentLimit',
      name: 'Recent requests',
      description: 'How many of the newest records to list (1-1000)',
      category: ['Recent requests'],
      defaultValue: defaultOptions.recentLimit,
      settings: { min: 1, max: 1000, integer: true },
    })
);
