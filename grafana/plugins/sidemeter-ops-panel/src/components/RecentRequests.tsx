import React from 'react';

import type { UsageRecord } from '../api/contract';
import type { OpsApi } from '../api/opsApi';
import { useOps } from '../api/useOps';
import { DASH, count, ms, time } from '../format';
import { useStatusColor } from './HealthOverview';
import { Muted, Section } from './states';
import { Table, useTableStyles } from './table';

function tokens(r: UsageRecord): string {
  if (r.prompt_tokens === null && r.completion_tokens === null) {
    return DASH;
  }
  // Estimated counts are marked: they came from the sidecar's tokenizer estimate, not the server.
  const mark = r.usage_source === 'estimated' ? ' (est.)' : '';
  return `${count(r.prompt_tokens)} / ${count(r.completion_tokens)}${mark}`;
}

export function RequestsView({ records }: { records: UsageRecord[] }) {
  const s = useTableStyles();
  const color = useStatusColor();
  if (records.length === 0) {
    return <Muted testId="requests-empty">No requests recorded yet.</Muted>;
  }
  const withPrompt = records.some((r) => r.prompt !== null);
  return (
    <Table label="Recent requests">
      <thead>
        <tr>
          <th>Time</th>
          <th>User</th>
          <th>Team</th>
          <th>Model</th>
          <th>Status</th>
          <th>Tokens in / out</th>
          <th>Latency</th>
          <th>TTFT</th>
          <th>Request id</th>
          {withPrompt && <th>Prompt</th>}
        </tr>
      </thead>
      <tbody>
        {records.map((r) => (
          <tr key={r.request_id} data-testid={`request-${r.request_id}`}>
            <td>{time(r.ts)}</td>
            <td>{r.user ?? DASH}</td>
            <td>{r.team ?? DASH}</td>
            <td>{r.model ?? DASH}</td>
            <td style={{ color: color(r.outcome === 'ok' ? 'ok' : 'down') }} title={r.error ?? undefined}>
              {r.status ?? DASH} {r.outcome}
            </td>
            <td>{tokens(r)}</td>
            <td>{ms(r.latency_ms)}</td>
            <td>{ms(r.ttft_ms)}</td>
            <td>
              <code>{r.request_id}</code>
            </td>
            {withPrompt && <td className={s.wrapCell}>{r.prompt ?? DASH}</td>}
          </tr>
        ))}
      </tbody>
    </Table>
  );
}

export function RecentRequests({ api, limit, refreshKey }: { api: OpsApi; limit: number; refreshKey: unknown }) {
  const loaded = useOps((signal) => api.requests({ limit }, signal), [api, limit, refreshKey]);
  return (
    <Section loaded={loaded} what="recent requests">
      {(data) => <RequestsView records={data.requests} />}
    </Section>
  );
}
