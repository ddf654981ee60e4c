import {
  dateTime,
  FieldConfigSource,
  LoadingState,
  PanelProps,
  TimeRange,
  getDefaultTimeRange,
  EventBusSrv,
} from '@grafana/data';

import { defaultOptions, OpsPanelOptions } from '../types';

/** What Grafana hands a panel, with the options given and a fixed day as the time range. */
export function panelProps(options: Partial<OpsPanelOptions> = {}, extra: Partial<PanelProps<OpsPanelOptions>> = {}) {
  const from = dateTime('2026-12-02T13:05:00.000Z');
  const to = dateTime('2026-12-03T13:05:00.000Z');
  const timeRange: TimeRange = { from, to, raw: { from: 'now-24h', to: 'now' } };
  const props: PanelProps<OpsPanelOptions> = {
    id: 1,
    title: 'LLM Platform Ops',
    data: { state: LoadingState.Done, series: [], timeRange: getDefaultTimeRange() },
    timeRange,
    timeZone: 'utc',
    options: { ...defaultOptions, ...options },
    fieldConfig: { defaults: {}, overrides: [] } as FieldConfigSource,
    transparent: false,
    width: 800,
    height: 600,
    renderCounter: 0,
    eventBus: new EventBusSrv(),
    replaceVariables: (s: string) => s,
    onOptionsChange: () => {},
    onFieldConfigChange: () => {},
    onChangeTimeRange: () => {},
    ...extra,
  };
  return props;
}
