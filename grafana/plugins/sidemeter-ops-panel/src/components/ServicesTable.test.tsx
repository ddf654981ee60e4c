import React from 'react';
import { render, screen } from '@testing-library/react';

import services from '../__fixtures__/services.json';
import type { ServicesAnswer } from '../api/contract';
import { OpsApiError } from '../api/opsApi';
import { fixClock } from '../testing/fakeOps';
import { ServicesTable } from './ServicesTable';

describe('ServicesTable', () => {
  // Records of another day print with their date.
  beforeEach(() => fixClock('2026-12-10T00:00:00Z'));
  afterEach(() => jest.useRealTimers());

  it('lists the upstream and the sidecar with kind, version, models, reachability and last seen', () => {
    render(<ServicesTable loaded={{ state: 'done', data: services as ServicesAnswer }} />);
    const upstream = screen.getByTestId('service-upstream-0');
    expect(upstream).toHaveTextContent('http://127.0.0.1:11434');
    expect(upstream).toHaveTextContent('ollama');
    expect(upstream).toHaveTextContent('0.5.1');
    expect(upstream).toHaveTextContent('llama3.2, qwen2.5:0.5b (loaded: llama3.2)');
    expect(upstream).toHaveTextContent('yes, 3.2 ms');
    const sidecar = screen.getByTestId('service-gpu-node-1:9090');
    expect(sidecar).toHaveTextContent('sidecar (this)');
    expect(sidecar).toHaveTextContent('auth jwt, sqlite');
    expect(sidecar).toHaveTextContent('2026-12-03 13:05');
  });

  it('shows an unreachable upstream with its error', () => {
    const [up, side] = (services as ServicesAnswer).services;
    const down = { ...up, reachable: false, latency_ms: null, last_error: 'connection refused' };
    render(<ServicesTable loaded={{ state: 'done', data: { services: [down, side] } as ServicesAnswer }} />);
    expect(screen.getByTestId('service-upstream-0')).toHaveTextContent('no: connection refused');
  });

  it('has loading, empty and unauthorised states', () => {
    const { rerender } = render(<ServicesTable loaded={{ state: 'loading' }} />);
    expect(screen.getByTestId('state-loading')).toBeInTheDocument();
    rerender(<ServicesTable loaded={{ state: 'done', data: { services: [] } }} />);
    expect(screen.getByTestId('services-empty')).toBeInTheDocument();
    const denied = new OpsApiError('token of user alice lacks the ops role (claim roles)', 403, 'forbidden');
    rerender(<ServicesTable loaded={{ state: 'error', error: denied }} />);
    expect(screen.getByTestId('state-unauthorised')).toHaveTextContent('lacks the ops role');
  });
});
