import health from '../__fixtures__/health.json';
import healthz from '../__fixtures__/healthz.json';
import stats from '../__fixtures__/stats.json';
import testAnswer from '../__fixtures__/test.json';
import badWindow from '../__fixtures__/error-bad-window.json';
import unauthorized from '../__fixtures__/error-unauthorized.json';
import notFoundRecord from '../__fixtures__/error-not-found-record.json';
import { fakeOps } from '../testing/fakeOps';
import { OpsApi, OpsApiError } from './opsApi';

describe('OpsApi', () => {
  it('sends the bearer token from the options, and none when the option is empty', async () => {
    const { api, calls, fetch } = fakeOps({ 'GET /ops/services': { body: { services: [] } } });
    await api.services();
    expect(calls[0].headers.Authorization).toBe('Bearer tok');
    expect(calls[0].url.href).toBe('http://ops.test:9090/ops/services');

    await new OpsApi({ baseUrl: 'http://ops.test:9090', token: '  ', fetch }).services();
    expect(calls[1].headers.Authorization).toBeUndefined();
  });

  it('asks /ops/stats for the dashboard range or for a fixed window', async () => {
    const { api, calls } = fakeOps({ 'GET /ops/stats': { body: stats } });
    const answer = await api.stats({ since: '2026-12-02T13:05:00.000Z', until: '2026-12-03T13:05:00.000Z' }, ['team']);
    expect(answer.total.requests).toBe(145);
    expect(Object.fromEntries(calls[0].url.searchParams)).toEqual({
      since: '2026-12-02T13:05:00.000Z',
      until: '2026-12-03T13:05:00.000Z',
      group_by: 'team',
    });
    await api.stats({ window: '24h' }, []);
    expect(Object.fromEntries(calls[1].url.searchParams)).toEqual({ window: '24h' });
  });

  it("surfaces the API's error message, type and allowed values", async () => {
    const { api } = fakeOps({ 'GET /ops/stats': { status: 400, body: badWindow } });
    const err: OpsApiError = await api.stats({ window: '2y' }, []).catch((e) => e);
    expect(err).toBeInstanceOf(OpsApiError);
    expect(err.message).toBe('unknown window 2y');
    expect(err.type).toBe('bad_request');
    expect(err.allowed).toEqual(['1h', '6h', '24h', '7d', '30d']);
    expect(err.unauthorised).toBe(false);
  });

  it('marks 401 and 403 as unauthorised', async () => {
    const { api } = fakeOps({ 'GET /ops/requests': { status: 401, body: unauthorized } });
    const err: OpsApiError = await api.requests({ limit: 5 }).catch((e) => e);
    expect(err.unauthorised).toBe(true);
    expect(err.message).toBe('missing bearer token');
  });

  it('reads the health document of a down sidecar from its 503', async () => {
    const { api } = fakeOps({ 'GET /ops/health': { status: 503, body: { ...health, status: 'down' } } });
    const view = await api.health();
    expect(view.source).toBe('ops');
    expect(view.source === 'ops' && view.health.status).toBe('down');
  });

  it('falls back to /healthz and /readyz where /ops/health is not served', async () => {
    const { api, calls } = fakeOps({
      'GET /healthz': { body: healthz },
      'GET /readyz': { status: 503, body: { status: 'not_ready', problems: ['proxy is not listening'] } },
    });
    const view = await api.health();
    expect(calls.map((c) => c.url.pathname)).toEqual(['/ops/health', '/healthz', '/readyz']);
    expect(view).toEqual({
      source: 'probes',
      liveness: healthz,
      readiness: { status: 'not_ready', problems: ['proxy is not listening'] },
    });
  });

  it('does not fall back when /ops/health fails otherwise', async () => {
    const { api, calls } = fakeOps({
      'GET /ops/health': { status: 500, text: 'oops' },
      'GET /healthz': { body: healthz },
    });
    await expect(api.health()).rejects.toThrow('GET /ops/health answered 500');
    expect(calls).toHaveLength(1);
  });

  it('words a non-JSON 404 as an endpoint this sidecar does not serve', async () => {
    const { api } = fakeOps({});
    const err: OpsApiError = await api.services().catch((e) => e);
    expect(err.missing).toBe(true);
    expect(err.message).toBe('GET /ops/services is not served by this sidecar (404): it is older than this panel');
  });

  it("keeps the API's message of a missing record", async () => {
    const { api, calls } = fakeOps({ 'GET /ops/requests/nope': { status: 404, body: notFoundRecord } });
    await expect(api.record('nope')).rejects.toThrow('no request with id nope');
    expect(calls[0].url.pathname).toBe('/ops/requests/nope');
  });

  it('posts the test request as JSON', async () => {
    const { api, calls } = fakeOps({ 'POST /ops/test': { body: testAnswer } });
    const body = { model: 'llama3.2', prompt: 'hi', stream: false, max_tokens: 64, dialect: 'ollama' as const };
    const answer = await api.test(body);
    expect(answer.request_id).toBe(testAnswer.request_id);
    expect(calls[0].body).toEqual(body);
    expect(calls[0].headers['Content-Type']).toBe('application/json');
  });

  it('says where it could not connect, and passes an abort through untouched', async () => {
    const refused = new OpsApi({
      baseUrl: 'http://ops.test:9090',
      fetch: async () => {
        throw new TypeError('Failed to fetch');
      },
    });
    await expect(refused.services()).rejects.toThrow(
      /Cannot reach the ops API at http:\/\/ops\.test:9090 \(Failed to fetch\)\..*ops_cors_origins/
    );

    const { api } = fakeOps({ 'GET /ops/services': { body: { services: [] } } });
    const ctl = new AbortController();
    ctl.abort();
    await expect(api.services(ctl.signal)).rejects.toMatchObject({ name: 'AbortError' });
  });

  it('refuses a 200 that is not the JSON it asked for', async () => {
    const { api } = fakeOps({ 'GET /ops/services': { text: '<html>login</html>' } });
    await expect(api.services()).rejects.toThrow('GET /ops/services answered 200 without the expected JSON');
  });
});
