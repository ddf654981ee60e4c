import React from 'react';
import { act, render, screen, waitFor } from '@testing-library/react';

import health from '../__fixtures__/health.json';
import stats from '../__fixtures__/stats.json';
import services from '../__fixtures__/services.json';
import requests from '../__fixtures__/requests.json';
import quotas from '../__fixtures__/quotas.json';
import unauthorized from '../__fixtures__/error-unauthorized.json';
import { Call, fakeOps } from '../testing/fakeOps';
import { panelProps } from '../testing/panelProps';
import { OpsPanel } from './OpsPanel';

const ROUTES = {
  'GET /ops/health': { body: health },
  'GET /ops/stats': { body: stats },
  'GET /ops/services': { body: services },
  'GET /ops/requests': { body: requests },
  'GET /ops/quotas': { body: quotas },
};

// The panel builds its client from the options, so the fake goes in as the global fetch.
function withFetch(routes: Parameters<typeof fakeOps>[0]) {
  const fake = fakeOps(routes);
  const spy = jest.spyOn(globalThis, 'fetch' as never).mockImplementation(fake.fetch as never);
  return { calls: fake.calls, restore: () => spy.mockRestore() };
}

describe('OpsPanel', () => {
  beforeAll(() => {
    if (!('fetch' in globalThis)) {
      Object.assign(globalThis, { fetch: () => Promise.reject(new Error('no fetch in this test')) });
    }
  });
  afterEach(() => jest.useRealTimers());

  it('shows every section from one sidecar, with the token and the dashboard range', async () => {
    const { calls, restore } = withFetch(ROUTES);
    render(<OpsPanel {...panelProps({ apiUrl: 'http://ops.test:9090', token: 'secret' })} />);
    expect(await screen.findByTestId('health-quant')).toBeInTheDocument();
    expect(await screen.findByTestId('stat-Requests')).toHaveTextContent('145');
    expect(await screen.findByTestId('service-upstream-0')).toBeInTheDocument();
    expect(await screen.findByTestId('request-b7e0d2c4-1111-4a2b-9c3d-000000000002')).toBeInTheDocument();
    expect(await screen.findByTestId('quota-team:ml-tokens_per_minute')).toBeInTheDocument();
    // The test console offers the upstream's models.
    expect(screen.getByLabelText('Model')).toHaveValue('llama3.2');
    expect(
      calls.every((c) => c.url.origin === 'http://ops.test:9090' && c.headers.Authorization === 'Bearer secret')
    ).toBe(true);
    const statsCall = calls.find((c) => c.url.pathname === '/ops/stats') as Call;
    expect(statsCall.url.searchParams.get('since')).toBe('2026-12-02T13:05:00.000Z');
    expect(statsCall.url.searchParams.get('until')).toBe('2026-12-03T13:05:00.000Z');
    restore();
  });

  it('asks for the fixed window when set, and shows only the sections switched on', async () => {
    const { calls, restore } = withFetch(ROUTES);
    render(
      <OpsPanel
        {...panelProps({
          statsWindowMode: 'fixed',
          statsWindow: '7d',
          showHealth: false,
          showServices: false,
          showTestConsole: false,
          showRecent: false,
          showQuotas: false,
        })}
      />
    );
    expect(await screen.findByTestId('stat-Requests')).toBeInTheDocument();
    expect(screen.queryByTestId('section-Health')).toBeNull();
    expect(screen.queryByTestId('section-Recent requests')).toBeNull();
    const statsCall = calls.find((c) => c.url.pathname === '/ops/stats') as Call;
    expect(statsCall.url.searchParams.get('window')).toBe('7d');
    const skipped = ['/ops/health', '/ops/requests', '/ops/quotas'];
    expect(calls.some((c) => skipped.includes(c.url.pathname))).toBe(false);
    restore();
  });

  it('shows the unauthorised state in each section that needs a token', async () => {
    const { restore } = withFetch({
      'GET /ops/health': { body: health },
      'GET /ops/stats': { status: 401, body: unauthorized },
      'GET /ops/services': { status: 401, body: unauthorized },
      'GET /ops/requests': { status: 401, body: unauthorized },
      'GET /ops/quotas': { status: 401, body: unauthorized },
    });
    render(<OpsPanel {...panelProps()} />);
    expect(await screen.findByTestId('health-overall')).toBeInTheDocument();
    await waitFor(() => expect(screen.getAllByTestId('state-unauthorised')).toHaveLength(4));
    const denied = screen.getAllByTestId('state-unauthorised');
    expect(denied[0]).toHaveTextContent('missing bearer token');
    restore();
  });

  it('polls at the refresh interval and aborts what is in flight on unmount', async () => {
    jest.useFakeTimers();
    const pending: Call[] = [];
    const { calls, restore } = withFetch({
      'GET /ops/health': { body: health },
      'GET /ops/stats': { body: stats },
      'GET /ops/services': { body: services },
      'GET /ops/requests': (call) => {
        pending.push(call);
        return new Promise(() => {}); // never answers
      },
    });
    const { unmount } = render(<OpsPanel {...panelProps({ refreshSeconds: 30 })} />);
    const healthCalls = () => calls.filter((c) => c.url.pathname === '/ops/health').length;
    expect(healthCalls()).toBe(1);
    await act(async () => {
      jest.advanceTimersByTime(29_000);
    });
    expect(healthCalls()).toBe(1);
    await act(async () => {
      jest.advanceTimersByTime(1_000);
    });
    expect(healthCalls()).toBe(2);
    // The refresh aborted the first unanswered /ops/requests; unmount aborts the second.
    expect(pending.map((c) => c.signal?.aborted)).toEqual([true, false]);
    unmount();
    expect(pending.map((c) => c.signal?.aborted)).toEqual([true, true]);
    restore();
  });

  it('asks for an ops API URL when there is none', () => {
    render(<OpsPanel {...panelProps({ apiUrl: ' ' })} />);
    expect(screen.getByTestId('no-url')).toHaveTextContent('Set the ops API URL in the panel options.');
  });
});
