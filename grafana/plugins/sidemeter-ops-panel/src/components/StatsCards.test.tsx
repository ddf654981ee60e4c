import React from 'react';
import { render, screen } from '@testing-library/react';

import stats from '../__fixtures__/stats.json';
import statsEmpty from '../__fixtures__/stats-empty.json';
import badWindow from '../__fixtures__/error-bad-window.json';
import { fakeOps, fixClock } from '../testing/fakeOps';
import { StatsCards } from './StatsCards';

const RANGE = { since: '2026-12-02T13:05:00.000Z', until: '2026-12-03T13:05:00.000Z' };

describe('StatsCards', () => {
  // Records of another day print with their date.
  beforeEach(() => fixClock('2026-12-10T00:00:00Z'));
  afterEach(() => jest.useRealTimers());

  it('shows the window totals as the API counted them', async () => {
    const { api, calls } = fakeOps({ 'GET /ops/stats': { body: stats } });
    render(<StatsCards api={api} window={RANGE} refreshKey={0} />);
    expect(await screen.findByTestId('stat-Requests')).toHaveTextContent('Requests145');
    expect(screen.getByTestId('stat-Requests')).toHaveTextContent('4 errors');
    expect(screen.getByTestId('stat-Error rate')).toHaveTextContent('2.8%');
    expect(screen.getByTestId('stat-Latency p50')).toHaveTextContent('412 ms');
    expect(screen.getByTestId('stat-Latency p95')).toHaveTextContent('1.83 s');
    expect(screen.getByTestId('stat-Latency p99')).toHaveTextContent('2.95 s');
    expect(screen.getByTestId('stat-TTFT p50')).toHaveTextContent('48 ms');
    expect(screen.getByTestId('stat-Tokens in')).toHaveTextContent('18.3k');
    expect(screen.getByTestId('stat-Tokens in')).toHaveTextContent('1200 cached');
    expect(screen.getByTestId('stat-Tokens out')).toHaveTextContent('40.3k');
    expect(screen.getByTestId('stat-Estimated')).toHaveTextContent('20%');
    expect(screen.getByTestId('stats-window')).toHaveTextContent('2026-12-02 13:05 – 2026-12-03 13:05 UTC (1.0 d)');
    expect(calls[0].url.searchParams.get('since')).toBe(RANGE.since);
  });

  it('dates both bounds of the window, even within one day', async () => {
    fixClock('2026-12-03T14:00:00Z');
    const { api } = fakeOps({ 'GET /ops/stats': { body: statsEmpty } });
    render(<StatsCards api={api} window={{ window: '1h' }} refreshKey={0} />);
    expect(await screen.findByTestId('stats-window')).toHaveTextContent(
      '2026-12-03 12:05 – 2026-12-03 13:05 UTC (1.0 h)'
    );
  });

  it('shows an empty window as dashes and says so, and marks approximate percentiles', async () => {
    const { api } = fakeOps({ 'GET /ops/stats': { body: statsEmpty } });
    render(<StatsCards api={api} window={{ window: '1h' }} refreshKey={0} />);
    expect(await screen.findByTestId('stat-Latency p95')).toHaveTextContent('Latency p95–');
    expect(screen.getByTestId('stats-window')).toHaveTextContent(
      'percentiles approximate (±1.0%): no requests in this window'
    );
  });

  it('says which windows the API accepts when the fixed one is unknown', async () => {
    const { api } = fakeOps({ 'GET /ops/stats': { status: 400, body: badWindow } });
    render(<StatsCards api={api} window={{ window: '2y' }} refreshKey={0} />);
    expect(await screen.findByTestId('state-error')).toHaveTextContent(
      'unknown window 2y (allowed: 1h, 6h, 24h, 7d, 30d)'
    );
  });
});
