import React from 'react';
import { css } from '@emotion/css';
import { GrafanaTheme2 } from '@grafana/data';
import { useStyles2, useTheme2 } from '@grafana/ui';

import type { QuotaLimit, QuotaRuleRow, QuotasAnswer } from '../api/contract';
import type { OpsApi } from '../api/opsApi';
import { useOps } from '../api/useOps';
import { duration, exact, pct, time } from '../format';
import { Muted, Section } from './states';
import { Table } from './table';

/** The alert rules' thresholds on the share left: a warning at 80 % used, critical at 95 %. */
export const WARN_LEFT = 0.2;
export const CRITICAL_LEFT = 0.05;

export type QuotaLevel = 'ok' | 'warning' | 'critical';

/** The share of a limit left, as the sidemeter_quota_remaining_ratio gauge computes it. */
export function leftShare(l: QuotaLimit): number {
  return l.limit > 0 ? l.remaining / l.limit : 0;
}

export function level(left: number): QuotaLevel {
  return left <= CRITICAL_LEFT ? 'critical' : left <= WARN_LEFT ? 'warning' : 'ok';
}

const getStyles = (theme: GrafanaTheme2) => ({
  track: css({
    width: 120,
    height: theme.spacing(1),
    borderRadius: theme.shape.radius.default,
    background: theme.colors.background.secondary,
    border: `1px solid ${theme.colors.border.weak}`,
    overflow: 'hidden',
    display: 'inline-block',
    verticalAlign: 'middle',
    marginRight: theme.spacing(1),
  }),
  fill: css({ height: '100%' }),
});

function Bar({ limit }: { limit: QuotaLimit }) {
  const s = useStyles2(getStyles);
  const theme = useTheme2();
  const left = leftShare(limit);
  const lvl = level(left);
  const color =
    lvl === 'critical'
      ? theme.colors.error.main
      : lvl === 'warning'
        ? theme.colors.warning.main
        : theme.colors.success.main;
  const used = Math.min(1, Math.max(0, 1 - left)); // reservations in flight count as used, like the gauge
  return (
    <>
      <span
        className={s.track}
        role="meter"
        aria-label={`${limit.name} used`}
        aria-valuemin={0}
        aria-valuemax={1}
        aria-valuenow={used}
        data-level={lvl}
      >
        <span className={s.fill} style={{ display: 'block', width: `${used * 100}%`, background: color }} />
      </span>
      <span style={{ color: lvl === 'ok' ? undefined : color }}>{pct(used)}</span>
    </>
  );
}

function ruleText(rule: QuotaRuleRow): string {
  const limits = Object.entries(rule)
    .filter(([k]) => k !== 'rule' && k !== 'user' && k !== 'team')
    .map(([k, v]) => `${k} ${typeof v === 'number' ? exact(v) : v}`);
  return `${rule.rule} (${limits.join(', ')})`;
}

export function QuotasView({ quotas }: { quotas: QuotasAnswer }) {
  if (quotas.rules.length === 0) {
    return <Muted testId="quotas-empty">No quota rules configured.</Muted>;
  }
  if (quotas.scopes.length === 0) {
    return (
      <Muted testId="quotas-no-scopes">
        No caller has met a quota rule since the sidecar started. Rules: {quotas.rules.map(ruleText).join('; ')}.
      </Muted>
    );
  }
  return (
    <Table label="Quotas">
      <thead>
        <tr>
          <th>Rule</th>
          <th>Scope</th>
          <th>Limit</th>
          <th>Used</th>
          <th>Reserved</th>
          <th>Of</th>
          <th>Remaining</th>
          <th>Share used</th>
          <th>Reset</th>
        </tr>
      </thead>
      <tbody>
        {quotas.scopes.flatMap((sc) =>
          sc.limits.map((l, i) => (
            <tr key={`${sc.rule}|${sc.scope}|${l.name}`} data-testid={`quota-${sc.scope}-${l.name}`}>
              {i === 0 && <td rowSpan={sc.limits.length}>{sc.rule}</td>}
              {i === 0 && <td rowSpan={sc.limits.length}>{sc.scope}</td>}
              <td>{l.name}</td>
              <td data-testid="quota-used">{exact(l.used)}</td>
              <td data-testid="quota-reserved">{exact(l.reserved)}</td>
              <td data-testid="quota-limit">{exact(l.limit)}</td>
              <td data-testid="quota-remaining">{exact(l.remaining)}</td>
              <td>
                <Bar limit={l} />
              </td>
              <td title={`${time(l.reset)} UTC`} data-testid="quota-reset">
                resets in {duration(l.reset_in_s)}
              </td>
            </tr>
          ))
        )}
      </tbody>
    </Table>
  );
}

export function QuotasTable({ api, refreshKey }: { api: OpsApi; refreshKey: unknown }) {
  const loaded = useOps((signal) => api.quotas(signal), [api, refreshKey]);
  return (
    <Section loaded={loaded} what="quotas">
      {(quotas) => <QuotasView quotas={quotas} />}
    </Section>
  );
}
