import React from 'react';
import { css } from '@emotion/css';
import { GrafanaTheme2 } from '@grafana/data';
import { Tooltip, useStyles2, useTheme2 } from '@grafana/ui';

import type { Health, Status, TeamHealth } from '../api/contract';
import type { HealthView, OpsApi } from '../api/opsApi';
import { useOps } from '../api/useOps';
import { count, duration, ms, pct } from '../format';
import { Muted, Section } from './states';

const getStyles = (theme: GrafanaTheme2) => ({
  row: css({ display: 'flex', flexWrap: 'wrap', gap: theme.spacing(1), alignItems: 'stretch' }),
  tile: css({
    borderRadius: theme.shape.radius.default,
    padding: theme.spacing(0.5, 1),
    minWidth: 96,
    cursor: 'default',
    color: theme.colors.text.primary,
    background: theme.colors.background.secondary,
    borderLeft: '4px solid',
    ':focus-visible': { outline: `2px solid ${theme.colors.primary.main}` },
  }),
  name: css({ fontSize: theme.typography.bodySmall.fontSize, color: theme.colors.text.secondary }),
  status: css({ fontWeight: theme.typography.fontWeightMedium, textTransform: 'uppercase' }),
  details: css({ margin: 0, padding: 0, listStyle: 'none', fontSize: theme.typography.bodySmall.fontSize }),
});

export function useStatusColor(): (status: Status | 'ready' | 'not_ready') => string {
  const theme = useTheme2();
  return (status) =>
    status === 'ok' || status === 'ready'
      ? theme.colors.success.main
      : status === 'degraded'
        ? theme.colors.warning.main
        : theme.colors.error.main;
}

function Tile({ name, status, details }: { name: string; status: Status | 'ready' | 'not_ready'; details: string[] }) {
  const s = useStyles2(getStyles);
  const color = useStatusColor();
  const content = (
    <ul className={s.details}>
      {details.map((d) => (
        <li key={d}>{d}</li>
      ))}
    </ul>
  );
  return (
    <Tooltip content={content} placement="bottom">
      <div
        className={s.tile}
        style={{ borderLeftColor: color(status) }}
        tabIndex={0}
        data-testid={`health-${name}`}
        data-status={status}
        aria-label={`${name}: ${status}. ${details.join('; ')}`}
      >
        <div className={s.name}>{name}</div>
        <div className={s.status} style={{ color: color(status) }}>
          {status.replace('_', ' ')}
        </div>
      </div>
    </Tooltip>
  );
}

function overallDetails(h: Health): string[] {
  const up = h.upstream;
  return [
    `instance ${h.instance}, version ${h.version}, up ${duration(h.uptime_s)}`,
    `upstream ${up.url}: ${up.reachable === null ? 'not checked yet' : up.reachable ? 'reachable' : 'unreachable'}` +
      (up.latency_ms !== null ? ` in ${ms(up.latency_ms)}` : '') +
      (up.last_error ? ` (${up.last_error})` : ''),
    `store ${h.store.kind}: ${h.store.writing ? 'writing' : 'not writing'}, queue ${h.store.queue_depth}, spilled ${h.store.spilled}` +
      (h.store.last_error ? ` (${h.store.last_error})` : ''),
    `window ${duration(h.window_s)}; degraded at ${pct(h.thresholds.error_rate_degraded)} errors or p95 ${ms(
      h.thresholds.latency_p95_degraded_ms
    )}`,
  ];
}

function teamDetails(t: TeamHealth): string[] {
  return [
    `${count(t.requests)} requests, ${count(t.errors)} errors (${pct(t.error_rate)})`,
    `latency p95 ${ms(t.latency_p95_ms)}, TTFT p95 ${ms(t.ttft_p95_ms)}`,
    ...t.reasons,
  ];
}

export function HealthTiles({ view }: { view: HealthView }) {
  const s = useStyles2(getStyles);
  if (view.source === 'probes') {
    const { liveness, readiness } = view;
    return (
      <>
        <div className={s.row}>
          <Tile
            name="sidecar"
            status={readiness.status}
            details={[`version ${liveness.version}, up ${duration(liveness.uptime_s)}`, ...readiness.problems]}
          />
        </div>
        <Muted testId="health-probes-only">
          From /healthz and /readyz: this sidecar has no /ops/health, so there is no per-team health.
        </Muted>
      </>
    );
  }
  const h = view.health;
  return (
    <>
      <div className={s.row}>
        <Tile name="overall" status={h.status} details={overallDetails(h)} />
        {h.teams.map((t) => (
          <Tile key={t.team} name={t.team} status={t.status} details={teamDetails(t)} />
        ))}
      </div>
      {h.teams.length === 0 && (
        <Muted testId="health-no-teams">No requests in the last {duration(h.window_s)}, so no per-team health.</Muted>
      )}
    </>
  );
}

export function HealthOverview({ api, refreshKey }: { api: OpsApi; refreshKey: unknown }) {
  const loaded = useOps((signal) => api.health(signal), [api, refreshKey]);
  return (
    <Section loaded={loaded} what="health">
      {(view) => <HealthTiles view={view} />}
    </Section>
  );
}
