import React, { useEffect, useMemo, useState } from 'react';
import { css } from '@emotion/css';
import { GrafanaTheme2, PanelProps } from '@grafana/data';
import { useStyles2 } from '@grafana/ui';

import { OpsApi, StatsWindow } from '../api/opsApi';
import { defaultOptions, OpsPanelOptions } from '../types';
import { HealthOverview } from './HealthOverview';
import { QuotasTable } from './QuotasTable';
import { RecentRequests } from './RecentRequests';
import { ServicesTable, useServices } from './ServicesTable';
import { StatsCards } from './StatsCards';
import { TestConsole } from './TestConsole';
import { Muted } from './states';

const getStyles = (theme: GrafanaTheme2) => ({
  root: css({ overflow: 'auto', display: 'flex', flexDirection: 'column', gap: theme.spacing(1.5) }),
  heading: css({
    fontSize: theme.typography.h6.fontSize,
    fontWeight: theme.typography.fontWeightMedium,
    margin: theme.spacing(0, 0, 0.5),
  }),
});

function Part({ title, children }: { title: string; children: React.ReactNode }) {
  const s = useStyles2(getStyles);
  return (
    <section aria-label={title} data-testid={`section-${title}`}>
      <h3 className={s.heading}>{title}</h3>
      {children}
    </section>
  );
}

/** A counter that ticks every `seconds` (never when 0), so each section reloads on the same beat. */
function usePoll(seconds: number): number {
  const [tick, setTick] = useState(0);
  useEffect(() => {
    if (!(seconds > 0)) {
      return;
    }
    const id = setInterval(() => setTick((t) => t + 1), Math.max(seconds, 1) * 1000);
    return () => clearInterval(id);
  }, [seconds]);
  return tick;
}

export function OpsPanel(props: PanelProps<OpsPanelOptions>) {
  if (!(props.options.apiUrl ?? defaultOptions.apiUrl).trim()) {
    return <Muted testId="no-url">Set the ops API URL in the panel options.</Muted>;
  }
  return <OpsSections {...props} />;
}

function OpsSections({ options, width, height, timeRange, renderCounter }: PanelProps<OpsPanelOptions>) {
  const s = useStyles2(getStyles);
  const o = { ...defaultOptions, ...options };
  const api = useMemo(() => new OpsApi({ baseUrl: o.apiUrl, token: o.token }), [o.apiUrl, o.token]);
  const tick = usePoll(o.refreshSeconds);
  // The dashboard's refresh picker re-renders the panel with a new renderCounter: reload then too.
  const refreshKey = `${tick}:${renderCounter ?? 0}`;
  const from = timeRange.from.toISOString();
  const to = timeRange.to.toISOString();
  const window: StatsWindow = o.statsWindowMode === 'fixed' ? { window: o.statsWindow } : { since: from, until: to };
  const services = useServices(api, refreshKey);
  const list = services.data?.services ?? [];
  const models = Array.from(new Set(list.flatMap((svc) => (svc.type === 'upstream' ? svc.models : []))));
  const firstUpstream = list.find((svc) => svc.type === 'upstream');
  const dialect = firstUpstream?.type === 'upstream' && firstUpstream.dialect === 'ollama' ? 'ollama' : 'openai';

  const none = !(o.showHealth || o.showStats || o.showServices || o.showTestConsole || o.showRecent || o.showQuotas);
  return (
    <div className={s.root} style={{ width, height }} data-testid="ops-panel">
      {none && <Muted>Every section is switched off in the panel options.</Muted>}
      {o.showHealth && (
        <Part title="Health">
          <HealthOverview api={api} refreshKey={refreshKey} />
        </Part>
      )}
      {o.showStats && (
        <Part title="Stats">
          <StatsCards api={api} window={window} refreshKey={refreshKey} />
        </Part>
      )}
      {o.showQuotas && (
        <Part title="Quotas">
          <QuotasTable api={api} refreshKey={refreshKey} />
        </Part>
      )}
      {o.showServices && (
        <Part title="Services">
          <ServicesTable loaded={services} />
        </Part>
      )}
      {o.showTestConsole && (
        <Part title="Test console">
          <TestConsole api={api} models={models} dialect={dialect} />
        </Part>
      )}
      {o.showRecent && (
        <Part title="Recent requests">
          <RecentRequests api={api} limit={o.recentLimit} refreshKey={refreshKey} />
        </Part>
      )}
    </div>
  );
}
