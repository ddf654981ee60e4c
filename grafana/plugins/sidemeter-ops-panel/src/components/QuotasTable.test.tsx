import React from 'react';
import { render, screen, within } from '@testing-library/react';

import quotas from '../__fixtures__/quotas.json';
import quotasEmpty from '../__fixtures__/quotas-empty.json';
import unauthorized from '../__fixtures__/error-unauthorized.json';
import type { QuotaLimit, QuotasAnswer } from '../api/contract';
import { fakeOps, fixClock } from '../testing/fakeOps';
import { level, leftShare, QuotasTable, QuotasView } from './QuotasTable';

const answer = quotas as QuotasAnswer;

function limitWith(used: number, reserved: number, limit = 1000): QuotaLimit {
  return {
    name: 'tokens_per_day',
    window: 'day',
    limit,
    used,
    reserved,
    remaining: Math.max(0, limit - used - reserved),
    reset: '2026-12-04T00:00:00Z',
    reset_in_s: 39312,
  };
}

describe('QuotasTable', () => {
  beforeEach(() => fixClock('2026-12-03T13:04:48Z'));
  afterEach(() => jest.useRealTimers());

  it('shows each scope and limit with usage, reservations, limit, remaining and a relative reset', () => {
    render(<QuotasView quotas={answer} />);
    const minute = screen.getByTestId('quota-team:ml-tokens_per_minute');
    expect(within(minute).getByText('team:ml', { selector: 'td:first-child' })).toBeInTheDocument();
    expect(within(minute).getByTestId('quota-used')).toHaveTextContent('16,500');
    expect(within(minute).getByTestId('quota-reserved')).toHaveTextContent('1,024');
    expect(within(minute).getByTestId('quota-limit')).toHaveTextContent('20,000');
    expect(within(minute).getByTestId('quota-remaining')).toHaveTextContent('2,476');
    expect(within(minute).getByTestId('quota-reset')).toHaveTextContent('resets in 12 s');
    expect(within(minute).getByTestId('quota-reset')).toHaveAttribute('title', '13:05:00 UTC');
    // The scope's second limit shares its rule and scope cells.
    const day = screen.getByTestId('quota-team:ml-tokens_per_day');
    expect(day.querySelectorAll('td')).toHaveLength(7);
    expect(within(day).getByTestId('quota-reset')).toHaveTextContent('resets in 10.9 h');
    expect(within(screen.getByTestId('quota-user:bob-tokens_per_month')).getByTestId('quota-reset')).toHaveTextContent(
      'resets in 28.5 d'
    );
  });

  it('colours each bar at the alert thresholds: 80 % used warns, 95 % is critical', () => {
    render(<QuotasView quotas={answer} />);
    const bar = (id: string) => within(screen.getByTestId(id)).getByRole('meter');
    // 16,500 used + 1,024 reserved of 20,000: 87.6 % used.
    expect(bar('quota-team:ml-tokens_per_minute')).toHaveAttribute('data-level', 'warning');
    expect(Number(bar('quota-team:ml-tokens_per_minute').getAttribute('aria-valuenow'))).toBeCloseTo(0.8762, 4);
    expect(screen.getByTestId('quota-team:ml-tokens_per_minute')).toHaveTextContent('88%');
    expect(bar('quota-team:ml-tokens_per_day')).toHaveAttribute('data-level', 'ok');
    expect(bar('quota-user:alice-requests_per_minute')).toHaveAttribute('data-level', 'critical');
    expect(bar('quota-user:bob-tokens_per_month')).toHaveAttribute('data-level', 'ok');
  });

  it('puts the thresholds where the alerts do', () => {
    const at = (used: number) => level(leftShare(limitWith(used, 0)));
    expect([at(790), at(799), at(800), at(949), at(950), at(1000)]).toEqual([
      'ok',
      'ok',
      'warning',
      'warning',
      'critical',
      'critical',
    ]);
    expect(level(leftShare(limitWith(700, 100)))).toBe('warning'); // reservations count as used
    expect(leftShare(limitWith(1200, 0))).toBe(0); // an overshoot reads as nothing left, not below 0
  });

  it('says when no rule is configured, and when no caller has met one yet', () => {
    const { rerender } = render(<QuotasView quotas={quotasEmpty as QuotasAnswer} />);
    expect(screen.getByTestId('quotas-empty')).toHaveTextContent('No quota rules configured.');
    rerender(<QuotasView quotas={{ rules: answer.rules, scopes: [] }} />);
    expect(screen.getByTestId('quotas-no-scopes')).toHaveTextContent(
      'Rules: team:ml (tokens_per_minute 20,000, tokens_per_day 500,000); user:alice (requests_per_minute 60); ' +
        'everyone (tokens_per_month 2,000,000).'
    );
  });

  it('reads GET /ops/quotas with the token, and shows its errors like the other sections', async () => {
    const ok = fakeOps({ 'GET /ops/quotas': { body: quotas } });
    const { unmount } = render(<QuotasTable api={ok.api} refreshKey={0} />);
    expect(await screen.findByTestId('quota-user:alice-requests_per_minute')).toBeInTheDocument();
    expect(ok.calls[0].url.pathname).toBe('/ops/quotas');
    expect(ok.calls[0].headers.Authorization).toBe('Bearer tok');
    unmount();

    const denied = fakeOps({ 'GET /ops/quotas': { status: 401, body: unauthorized } });
    const second = render(<QuotasTable api={denied.api} refreshKey={0} />);
    expect(await screen.findByTestId('state-unauthorised')).toHaveTextContent('Not authorised to read quotas');
    second.unmount();

    // A sidecar older than /ops/quotas answers aiohttp's plain 404.
    const older = fakeOps({});
    render(<QuotasTable api={older.api} refreshKey={0} />);
    expect(await screen.findByTestId('state-missing')).toHaveTextContent('/ops/quotas');
  });
});
