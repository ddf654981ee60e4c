import type {
  ErrorBody,
  ErrorType,
  Health,
  Liveness,
  QuotasAnswer,
  Readiness,
  RequestsAnswer,
  RequestsQuery,
  ServicesAnswer,
  StatsAnswer,
  TestAnswer,
  TestRequest,
  UsageRecord,
} from './contract';

/** An answer other than the one asked for, worded for the panel: the API's own message when it sent one. */
export class OpsApiError extends Error {
  readonly status: number;
  readonly type: ErrorType | 'network' | 'bad_answer';
  readonly allowed?: string[];

  constructor(message: string, status: number, type: OpsApiError['type'], allowed?: string[]) {
    super(message);
    this.name = 'OpsApiError';
    this.status = status;
    this.type = type;
    this.allowed = allowed;
  }

  /** The token is missing, invalid or lacks the ops role. */
  get unauthorised(): boolean {
    return this.type === 'unauthorized' || this.type === 'forbidden';
  }

  /** This sidecar does not serve the endpoint (an older version). */
  get missing(): boolean {
    return this.status === 404 && this.type === 'not_found';
  }
}

/** What the health overview shows: the full `/ops/health`, or liveness and readiness from an older sidecar. */
export type HealthView =
  { source: 'ops'; health: Health } | { source: 'probes'; liveness: Liveness; readiness: Readiness };

/** The stats window: the dashboard's time range (since/until) or a fixed window such as `24h`. */
export type StatsWindow = { since: string; until: string } | { window: string };

export interface OpsApiConfig {
  baseUrl: string;
  token?: string;
  fetch?: typeof fetch;
}

type Query = Record<string, string | number | undefined>;

function isErrorBody(body: unknown): body is ErrorBody {
  const err = (body as ErrorBody | null)?.error;
  return typeof err === 'object' && err !== null && typeof err.message === 'string';
}

function fallbackType(status: number): ErrorType {
  const types: Record<number, ErrorType> = {
    400: 'bad_request',
    401: 'unauthorized',
    403: 'forbidden',
    404: 'not_found',
    405: 'method_not_allowed',
    503: 'unavailable',
  };
  return types[status] ?? 'internal';
}

/** A typed client of the Sidemeter ops API. Every call takes the AbortSignal of the view that asked. */
export class OpsApi {
  readonly baseUrl: string;
  private readonly token?: string;
  private readonly fetchImpl: typeof fetch;

  constructor({ baseUrl, token, fetch: fetchImpl }: OpsApiConfig) {
    this.baseUrl = baseUrl.trim().replace(/\/+$/, '');
    this.token = token?.trim() || undefined;
    // Bound to the global object: window.fetch throws "Illegal invocation" when called as a method of another object.
    this.fetchImpl = fetchImpl ?? ((input, init) => globalThis.fetch(input, init));
  }

  url(path: string, query: Query = {}): string {
    const params = new URLSearchParams();
    for (const [k, v] of Object.entries(query)) {
      if (v !== undefined && v !== '') {
        params.set(k, String(v));
      }
    }
    const qs = params.toString();
    return `${this.baseUrl}${path}${qs ? `?${qs}` : ''}`;
  }

  /** GET /ops/health; from a sidecar without it, /healthz and /readyz. */
  async health(signal?: AbortSignal): Promise<HealthView> {
    try {
      // 503 carries the same document when the status is down.
      const health = await this.request<Health>('GET', '/ops/health', { signal, okStatuses: [503] });
      return { source: 'ops', health };
    } catch (e) {
      if (!(e instanceof OpsApiError && e.missing)) {
        throw e;
      }
    }
    const [liveness, readiness] = await Promise.all([
      this.request<Liveness>('GET', '/healthz', { signal }),
      this.request<Readiness>('GET', '/readyz', { signal, okStatuses: [503] }),
    ]);
    return { source: 'probes', liveness, readiness };
  }

  stats(window: StatsWindow, groupBy: string[], signal?: AbortSignal): Promise<StatsAnswer> {
    return this.request('GET', '/ops/stats', {
      query: { ...window, group_by: groupBy.join(',') || undefined },
      signal,
    });
  }

  services(signal?: AbortSignal): Promise<ServicesAnswer> {
    return this.request('GET', '/ops/services', { signal });
  }

  test(body: TestRequest, signal?: AbortSignal): Promise<TestAnswer> {
    return this.request('POST', '/ops/test', { body, signal });
  }

  requests(query: RequestsQuery, signal?: AbortSignal): Promise<RequestsAnswer> {
    return this.request('GET', '/ops/requests', { query: { ...query }, signal });
  }

  quotas(signal?: AbortSignal): Promise<QuotasAnswer> {
    return this.request('GET', '/ops/quotas', { signal });
  }

  record(requestId: string, signal?: AbortSignal): Promise<UsageRecord> {
    return this.request('GET', `/ops/requests/${encodeURIComponent(requestId)}`, { signal });
  }

  private async request<T>(
    method: 'GET' | 'POST',
    path: string,
    opts: { query?: Query; body?: unknown; signal?: AbortSignal; okStatuses?: number[] } = {}
  ): Promise<T> {
    const headers: Record<string, string> = { Accept: 'application/json' };
    if (this.token) {
      headers.Authorization = `Bearer ${this.token}`;
    }
    if (opts.body !== undefined) {
      headers['Content-Type'] = 'application/json';
    }
    const url = this.url(path, opts.query);
    let resp: Response;
    try {
      resp = await this.fetchImpl(url, {
        method,
        headers,
        body: opts.body === undefined ? undefined : JSON.stringify(opts.body),
        signal: opts.signal,
      });
    } catch (e) {
      if ((e as Error)?.name === 'AbortError') {
        throw e;
      }
      throw new OpsApiError(
        `Cannot reach the ops API at ${this.baseUrl} (${(e as Error)?.message ?? e}). ` +
          `Check the URL, that the sidecar runs, and that its ops_cors_origins allows this Grafana's origin.`,
        0,
        'network'
      );
    }
    const text = await resp.text();
    let body: unknown = undefined;
    try {
      body = text ? JSON.parse(text) : undefined;
    } catch {
      // A non-JSON answer: a proxy's page or an aiohttp default error; worded below.
    }
    if (resp.ok || opts.okStatuses?.includes(resp.status)) {
      if (body === undefined || isErrorBody(body)) {
        throw new OpsApiError(
          `${method} ${path} answered ${resp.status} without the expected JSON`,
          resp.status,
          'bad_answer'
        );
      }
      return body as T;
    }
    if (isErrorBody(body)) {
      const { type, message, allowed } = body.error;
      throw new OpsApiError(message, resp.status, type ?? fallbackType(resp.status), allowed);
    }
    const type = fallbackType(resp.status);
    const message =
      resp.status === 404
        ? `${method} ${path} is not served by this sidecar (404): it is older than this panel`
        : `${method} ${path} answered ${resp.status} ${resp.statusText}`.trim();
    throw new OpsApiError(message, resp.status, type);
  }
}
