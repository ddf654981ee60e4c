export type StatsWindowMode = 'dashboard' | 'fixed';

export interface OpsPanelOptions {
  /** Base URL of the sidecar's ops API, as the browser reaches it. */
  apiUrl: string;
  /** Seconds between polls; 0 polls only on the dashboard's own refresh. */
  refreshSeconds: number;
  /** Bearer token for the ops API. Stored in the dashboard JSON: panels have no secure settings. */
  token: string;
  showHealth: boolean;
  showStats: boolean;
  showServices: boolean;
  showTestConsole: boolean;
  showRecent: boolean;
  showQuotas: boolean;
  statsWindowMode: StatsWindowMode;
  /** The fixed stats window, e.g. `1h`, `24h`, `7d` (what /ops/stats accepts). */
  statsWindow: string;
  recentLimit: number;
}

export const defaultOptions: OpsPanelOptions = {
  apiUrl: 'http://localhost:9090',
  refreshSeconds: 30,
  token: '',
  showHealth: true,
  showStats: true,
  showServices: true,
  showTestConsole: true,
  showRecent: true,
  showQuotas: true,
  statsWindowMode: 'dashboard',
  statsWindow: '24h',
  recentLimit: 20,
};
