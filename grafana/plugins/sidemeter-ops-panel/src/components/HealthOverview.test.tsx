import React from 'react';
import { fireEvent, render, screen } from '@testing-library/react';

import health from '../__fixtures__/health.json';
import healthz from '../__fixtures__/healthz.json';
import readyz from '../__fixtures__/readyz.json';
import { fakeOps } from '../testing/fakeOps';
import { HealthOverview } from './HealthOverview';

describe('HealthOverview', () => {
  it('shows the overall and per-team status from /ops/health, with the numbers on hover', async () => {
    const { api } = fakeOps({ 'GET /ops/health': { body: health } });
    render(<HealthOverview api={api} refreshKey={0} />);
    expect(screen.getByTestId('state-loading')).toBeInTheDocument();

    const overall = await screen.findByTestId('health-overall');
    expect(overall).toHaveAttribute('data-status', 'degraded');
    expect(screen.getByTestId('health-quant')).toHaveAttribute('data-status', 'ok');
    const finetune = screen.getByTestId('health-finetune');
    expect(finetune).toHaveAttribute('data-status', 'degraded');
    expect(finetune).toHaveTextContent('degraded');

    fireEvent.mouseEnter(finetune);
    expect(await screen.findByText('25 requests, 3 errors (12%)')).toBeInTheDocument();
    expect(screen.getByText('error rate 12% >= 5%')).toBeInTheDocument();
    expect(screen.getByText('latency p95 2.10 s, TTFT p95 –')).toBeInTheDocument();
  });

  it('colours ok and degraded differently', async () => {
    const { api } = fakeOps({ 'GET /ops/health': { body: health } });
    render(<HealthOverview api={api} refreshKey={0} />);
    const ok = await screen.findByTestId('health-quant');
    const degraded = screen.getByTestId('health-finetune');
    expect(ok.style.borderLeftColor).not.toBe('');
    expect(ok.style.borderLeftColor).not.toBe(degraded.style.borderLeftColor);
  });

  it('says when no team sent requests in the window', async () => {
    const { api } = fakeOps({ 'GET /ops/health': { body: { ...health, status: 'ok', teams: [] } } });
    render(<HealthOverview api={api} refreshKey={0} />);
    expect(await screen.findByTestId('health-no-teams')).toHaveTextContent('No requests in the last 5 min');
  });

  it('shows liveness and readiness from a sidecar without /ops/health', async () => {
    const { api } = fakeOps({ 'GET /healthz': { body: healthz }, 'GET /readyz': { body: readyz } });
    render(<HealthOverview api={api} refreshKey={0} />);
    expect(await screen.findByTestId('health-sidecar')).toHaveAttribute('data-status', 'ready');
    expect(screen.getByTestId('health-probes-only')).toBeInTheDocument();
    expect(screen.getByTestId('health-sidecar')).toHaveAttribute(
      'aria-label',
      expect.stringContaining('version 0.3.2')
    );
  });

  it("shows the API's error, and keeps the last answer when a refresh fails", async () => {
    let fail = false;
    const { api } = fakeOps({
      'GET /ops/health': () =>
        fail ? { status: 500, body: { error: { type: 'internal', message: 'store query failed' } } } : { body: health },
    });
    const { rerender } = render(<HealthOverview api={api} refreshKey={0} />);
    await screen.findByTestId('health-overall');
    fail = true;
    rerender(<HealthOverview api={api} refreshKey={1} />);
    expect(await screen.findByTestId('state-error')).toHaveTextContent('store query failed');
    expect(screen.getByTestId('health-overall')).toBeInTheDocument();
  });
});
