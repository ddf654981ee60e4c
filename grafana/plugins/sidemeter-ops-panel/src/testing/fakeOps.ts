// A fetch that answers like the ops API from the recorded answers in src/__fixtures__.
import { OpsApi } from '../api/opsApi';

export interface Answer {
  status?: number;
  body?: unknown;
  /** A raw text body, for non-JSON answers. */
  text?: string;
}

export interface Call {
  url: URL;
  method: string;
  headers: Record<string, string>;
  body?: unknown;
  signal?: AbortSignal;
}

type Route = Answer | ((call: Call) => Answer | Promise<Answer>);

const REASONS: Record<number, string> = {
  200: 'OK',
  401: 'Unauthorized',
  404: 'Not Found',
  503: 'Service Unavailable',
};

/** Routes are "METHOD /path" → answer; anything else answers like aiohttp's default 404. */
export function fakeOps(routes: Record<string, Route>) {
  const calls: Call[] = [];
  const fetchImpl = async (input: RequestInfo | URL, init: RequestInit = {}): Promise<Response> => {
    const url = new URL(String(input));
    const method = init.method ?? 'GET';
    const call: Call = {
      url,
      method,
      headers: (init.headers ?? {}) as Record<string, string>,
      body: init.body ? JSON.parse(String(init.body)) : undefined,
      signal: init.signal ?? undefined,
    };
    calls.push(call);
    if (init.signal?.aborted) {
      throw Object.assign(new Error('The operation was aborted.'), { name: 'AbortError' });
    }
    const route = routes[`${method} ${url.pathname}`];
    const answer: Answer =
      route === undefined
        ? { status: 404, text: '404: Not Found' }
        : typeof route === 'function'
          ? await route(call)
          : route;
    const status = answer.status ?? 200;
    const text = answer.text ?? JSON.stringify(answer.body);
    return {
      ok: status >= 200 && status < 300,
      status,
      statusText: REASONS[status] ?? '',
      text: async () => text,
    } as Response;
  };
  const api = new OpsApi({ baseUrl: 'http://ops.test:9090/', token: 'tok', fetch: fetchImpl as typeof fetch });
  return { api, calls, fetch: fetchImpl as typeof fetch };
}

/** Fakes only the clock (the sections print today's times shorter), leaving timers real for findBy*. */
export function fixClock(iso: string) {
  jest.useFakeTimers({
    now: new Date(iso),
    doNotFake: [
      'setTimeout',
      'clearTimeout',
      'setInterval',
      'clearInterval',
      'setImmediate',
      'clearImmediate',
      'nextTick',
      'queueMicrotask',
    ],
  });
}
