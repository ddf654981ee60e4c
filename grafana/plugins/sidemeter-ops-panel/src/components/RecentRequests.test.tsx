import React from 'react';
import { render, screen, within } from '@testing-library/react';

import requests from '../__fixtures__/requests.json';
import requestsEmpty from '../__fixtures__/requests-empty.json';
import { fakeOps } from '../testing/fakeOps';
import { RecentRequests } from './RecentRequests';

describe('RecentRequests', () => {
  it('lists the newest records with user, team, model, status, tokens and latency', async () => {
    const { api, calls } = fakeOps({ 'GET /ops/requests': { body: requests } });
    render(<RecentRequests api={api} limit={20} refreshKey={0} />);
    const ok = await screen.findByTestId('request-b7e0d2c4-1111-4a2b-9c3d-000000000002');
    expect(calls[0].url.searchParams.get('limit')).toBe('20');
    for (const text of ['alice', 'quant', 'llama3.2', '200 ok', '31 / 128 (est.)', '2.41 s', '62 ms']) {
      expect(ok).toHaveTextContent(text);
    }
    const failed = screen.getByTestId('request-b7e0d2c4-1111-4a2b-9c3d-000000000001');
    expect(failed).toHaveTextContent('502 upstream_error');
    expect(within(failed).getByText('502 upstream_error')).toHaveAttribute('title', 'upstream refused the connection');
  });

  it('shows the prompt column only when the sidecar captured prompts', async () => {
    const { api } = fakeOps({ 'GET /ops/requests': { body: requests } });
    render(<RecentRequests api={api} limit={20} refreshKey={0} />);
    expect(await screen.findByText('Summarise the Q3 risk report in three bullets.')).toBeInTheDocument();
    expect(screen.getByRole('columnheader', { name: 'Prompt' })).toBeInTheDocument();

    const noPrompts = { ...requests, requests: requests.requests.map((r) => ({ ...r, prompt: null })) };
    const other = fakeOps({ 'GET /ops/requests': { body: noPrompts } });
    render(<RecentRequests api={other.api} limit={20} refreshKey={0} />);
    await screen.findAllByTestId('request-b7e0d2c4-1111-4a2b-9c3d-000000000001');
    expect(screen.getAllByRole('columnheader', { name: 'Prompt' })).toHaveLength(1);
  });

  it('says when nothing is recorded yet', async () => {
    const { api } = fakeOps({ 'GET /ops/requests': { body: requestsEmpty } });
    render(<RecentRequests api={api} limit={5} refreshKey={0} />);
    expect(await screen.findByTestId('requests-empty')).toHaveTextContent('No requests recorded yet.');
  });

  it('says the endpoint is not there on an older sidecar', async () => {
    const { api } = fakeOps({});
    render(<RecentRequests api={api} limit={5} refreshKey={0} />);
    expect(await screen.findByTestId('state-missing')).toHaveTextContent(
      'GET /ops/requests is not served by this sidecar'
    );
  });
});
