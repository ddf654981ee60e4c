import React from 'react';
import { css } from '@emotion/css';
import { GrafanaTheme2 } from '@grafana/data';
import { useStyles2 } from '@grafana/ui';

import type { StatsAnswer } from '../api/contract';
import type { OpsApi, StatsWindow } from '../api/opsApi';
import { useOps } from '../api/useOps';
import { count, duration, ms, pct, span } from '../format';
import { Muted, Section } from './states';

const getStyles = (theme: GrafanaTheme2) => ({
  grid: css({
    display: 'grid',
    gridTemplateColumns: 'repeat(auto-fill, minmax(110px, 1fr))',
    gap: theme.spacing(1),
  }),
  card: css({
    background: theme.colors.background.secondary,
    borderRadius: theme.shape.radius.default,
    padding: theme.spacing(0.5, 1),
  }),
  label: css({ fontSize: theme.typography.bodySmall.fontSize, color: theme.colors.text.secondary }),
  value: css({ fontSize: theme.typography.h4.fontSize, fontWeight: theme.typography.fontWeightMedium }),
  sub: css({ fontSize: theme.typography.bodySmall.fontSize, color: theme.colors.text.secondary }),
});

function Card({ label, value, sub }: { label: string; value: string; sub?: string }) {
  const s = useStyles2(getStyles);
  return (
    <div className={s.card} data-testid={`stat-${label}`}>
      <div className={s.label}>{label}</div>
      <div className={s.value}>{value}</div>
      {sub && <div className={s.sub}>{sub}</div>}
    </div>
  );
}

export function StatsView({ stats }: { stats: StatsAnswer }) {
  const s = useStyles2(getStyles);
  const t = stats.total;
  // Approximate percentiles are marked with "≈" and their error bound, so nobody reads them as exact.
  const approx = stats.percentiles === 'approximate';
  const p = (v: number | null) => (approx && v !== null ? `≈${ms(v)}` : ms(v));
  return (
    <>
      <div className={s.grid}>
        <Card label="Requests" value={count(t.requests)} sub={`${count(t.errors)} errors`} />
        <Card label="Error rate" value={pct(t.error_rate)} />
        <Card label="Latency p50" value={p(t.latency_ms.p50)} />
        <Card label="Latency p95" value={p(t.latency_ms.p95)} />
        <Card label="Latency p99" value={p(t.latency_ms.p99)} />
        <Card label="TTFT p50" value={p(t.ttft_ms.p50)} sub={`p95 ${p(t.ttft_ms.p95)}`} />
        <Card
          label="Tokens in"
          value={count(t.tokens_in)}
          sub={t.cached_tokens ? `${count(t.cached_tokens)} cached` : undefined}
        />
        <Card
          label="Tokens out"
          value={count(t.tokens_out)}
          sub={t.reasoning_tokens ? `${count(t.reasoning_tokens)} reasoning` : undefined}
        />
        <Card label="Estimated" value={pct(t.estimated_share)} sub={`${count(t.estimated)} requests`} />
      </div>
      <Muted testId="stats-window">
        {span(stats.since, stats.until)} ({duration(stats.window_s)})
        {approx ? `, percentiles approximate (±${pct(stats.percentile_error)})` : ''}
        {t.requests === 0 ? ': no requests in this window' : ''}
      </Muted>
    </>
  );
}

export function StatsCards({ api, window, refreshKey }: { api: OpsApi; window: StatsWindow; refreshKey: unknown }) {
  const key = JSON.stringify(window);
  const loaded = useOps((signal) => api.stats(window, ['team'], signal), [api, key, refreshKey]);
  return (
    <Section loaded={loaded} what="stats">
      {(stats) => <StatsView stats={stats} />}
    </Section>
  );
}
