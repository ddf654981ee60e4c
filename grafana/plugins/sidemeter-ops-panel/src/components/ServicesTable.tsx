import React from 'react';

import type { Service, ServicesAnswer } from '../api/contract';
import type { OpsApi } from '../api/opsApi';
import { Loaded, useOps } from '../api/useOps';
import { DASH, ms, time } from '../format';
import { Muted, Section } from './states';
import { Table } from './table';
import { useStatusColor } from './HealthOverview';

function Row({ svc }: { svc: Service }) {
  const color = useStatusColor();
  if (svc.type === 'upstream') {
    const state = svc.reachable ? 'ok' : 'down';
    return (
      <tr data-testid={`service-${svc.id}`}>
        <td>upstream</td>
        <td title={svc.last_error ?? undefined}>{svc.url}</td>
        <td>{svc.kind}</td>
        <td>{svc.version ?? DASH}</td>
        <td>
          {svc.models.length ? svc.models.join(', ') : DASH}
          {svc.loaded_models?.length ? ` (loaded: ${svc.loaded_models.join(', ')})` : ''}
        </td>
        <td style={{ color: color(state) }}>
          {svc.reachable ? `yes, ${ms(svc.latency_ms)}` : `no${svc.last_error ? `: ${svc.last_error}` : ''}`}
        </td>
        <td>{time(svc.last_checked)}</td>
      </tr>
    );
  }
  const where = [svc.pod, svc.namespace, svc.node].filter(Boolean).join(' / ');
  return (
    <tr data-testid={`service-${svc.id}`}>
      <td>{svc.self ? 'sidecar (this)' : 'sidecar'}</td>
      <td>
        {svc.id}
        {where ? ` (${where})` : ''}
      </td>
      <td>
        auth {svc.auth}, {svc.store}
      </td>
      <td>{svc.version}</td>
      <td>
        {svc.listen}, ops {svc.ops_listen}
      </td>
      <td style={{ color: color('ok') }}>{svc.self ? 'yes' : DASH}</td>
      <td>{time(svc.last_seen)}</td>
    </tr>
  );
}

export function ServicesView({ services }: { services: Service[] }) {
  if (services.length === 0) {
    return <Muted testId="services-empty">The sidecar reports no services.</Muted>;
  }
  return (
    <Table label="Services">
      <thead>
        <tr>
          <th>Type</th>
          <th>Address</th>
          <th>Kind</th>
          <th>Version</th>
          <th>Models / listen</th>
          <th>Reachable</th>
          <th>Last seen</th>
        </tr>
      </thead>
      <tbody>
        {services.map((svc) => (
          <Row key={`${svc.type}-${svc.id}`} svc={svc} />
        ))}
      </tbody>
    </Table>
  );
}

/** Services are loaded once by the panel (the test console reads their models too) and shown here. */
export function ServicesTable({ loaded }: { loaded: Loaded<ServicesAnswer> }) {
  return (
    <Section loaded={loaded} what="services">
      {(data) => <ServicesView services={data.services} />}
    </Section>
  );
}

export function useServices(api: OpsApi, refreshKey: unknown): Loaded<ServicesAnswer> {
  return useOps((signal) => api.services(signal), [api, refreshKey]);
}
