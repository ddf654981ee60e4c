// The JSON the Sidemeter ops API answers. Times are ISO-8601 UTC strings, durations are
// milliseconds unless the key ends in `_s`.

export type Status = 'ok' | 'degraded' | 'down';

export type ErrorType =
  'bad_request' | 'unauthorized' | 'forbidden' | 'not_found' | 'method_not_allowed' | 'unavailable' | 'internal';

export interface ErrorBody {
  error: { type: ErrorType; message: string; allowed?: string[] };
}

export interface UpstreamHealth {
  url: string;
  reachable: boolean | null;
  latency_ms: number | null;
  last_error: string | null;
  last_checked: string | null;
}

export interface StoreHealth {
  kind: 'sqlite' | 'postgresql';
  writing: boolean;
  queue_depth: number;
  spilled: number;
  last_error: string | null;
}

export interface TeamHealth {
  team: string;
  status: Status;
  requests: number;
  errors: number;
  error_rate: number;
  latency_p95_ms: number | null;
  ttft_p95_ms: number | null;
  reasons: string[];
}

export interface Health {
  status: Status;
  version: string;
  instance: string;
  uptime_s: number;
  upstream: UpstreamHealth;
  store: StoreHealth;
  /** Where the quota counters stand: off (no rules), local, synced or stale (a fleet's). */
  quota?: QuotaHealth;
  window_s: number;
  thresholds: {
    error_rate_degraded: number;
    error_rate_down: number;
    latency_p95_degraded_ms: number;
    latency_p95_down_ms: number;
  };
  teams: TeamHealth[];
}

export interface QuotaHealth {
  state: 'off' | 'local' | 'synced' | 'stale';
  rules: number;
  scopes: number;
  last_sync: string | null;
  last_error: string | null;
  sync_interval_s: number | null;
  stale_after_s: number | null;
  store_down: { rates: 'open' | 'closed'; budgets: 'open' | 'closed' };
}

/** `/healthz` and `/readyz`, which every sidecar version serves. */
export interface Liveness {
  status: 'ok';
  version: string;
  uptime_s: number;
}

export interface Readiness {
  status: 'ready' | 'not_ready';
  problems: string[];
}

export interface Percentiles {
  p50: number | null;
  p95: number | null;
  p99: number | null;
}

export interface Stats {
  requests: number;
  errors: number;
  error_rate: number;
  tokens_in: number;
  tokens_out: number;
  cached_tokens: number;
  reasoning_tokens: number;
  estimated: number;
  estimated_share: number;
  cost: number | null; // sum of the records' costs; null when none had one
  costed: number; // records that had a cost
  latency_ms: Percentiles;
  ttft_ms: Percentiles;
  tokens_per_second: { p50: number | null };
}

export interface StatsGroup extends Stats {
  key: Record<string, string | null>;
}

export interface StatsAnswer {
  since: string;
  until: string;
  window_s: number;
  group_by: string[];
  scope: 'local' | 'fleet';
  instance: string | null; // the sidecar of scope local; null for the fleet
  percentiles: 'exact' | 'approximate';
  percentile_error: number;
  total: Stats;
  groups: StatsGroup[];
}

export interface UpstreamService {
  type: 'upstream';
  id: string;
  /** The id of the sidecar entry that fronts it. */
  sidecar: string;
  url: string;
  dialect: 'ollama' | 'openai' | null;
  kind: 'ollama' | 'vllm' | 'llamacpp' | 'openai_compatible' | 'unknown';
  version: string | null;
  models: string[];
  loaded_models: string[] | null;
  reachable: boolean;
  latency_ms: number | null;
  last_error: string | null;
  last_checked: string | null;
}

export interface SidecarService {
  type: 'sidecar';
  id: string;
  self: boolean;
  state: 'live' | 'stale' | 'stopped';
  version: string;
  upstream: string;
  listen: string;
  ops_listen: string;
  auth: 'jwt' | 'off';
  store: 'sqlite' | 'postgresql';
  pod: string | null;
  namespace: string | null;
  node: string | null;
  started: string;
  last_seen: string;
  stopped: string | null;
  last_heartbeat: string | null;
  heartbeat_error: string | null;
  conflict: string | null;
}

export type Service = UpstreamService | SidecarService;

export interface ServicesAnswer {
  services: Service[];
}

export type Dialect = 'openai' | 'ollama';

export interface TestRequest {
  model: string;
  prompt: string;
  stream: boolean;
  max_tokens: number;
  dialect: Dialect;
}

/** One usage record, as `sidemeter usage export --format jsonl` writes it. */
export interface UsageRecord {
  request_id: string;
  ts: string;
  user: string | null;
  team: string | null;
  client_ip: string | null;
  upstream: string | null;
  dialect: string | null;
  endpoint: string | null;
  operation: string | null;
  model: string | null;
  stream: boolean | null;
  status: number | null;
  outcome: string;
  error: string | null;
  prompt_tokens: number | null;
  completion_tokens: number | null;
  total_tokens: number | null;
  cached_tokens: number | null;
  reasoning_tokens: number | null;
  usage_source: string;
  latency_ms: number | null;
  ttft_ms: number | null;
  server_duration_ms: number | null;
  tokens_per_second: number | null;
  request_bytes: number;
  response_bytes: number;
  prompt: string | null;
  instance: string | null; // the sidecar that metered it (fleet)
  cost: number | null; // by the price table; null without a price
}

export interface TestAnswer {
  request_id: string;
  status: number;
  ok: boolean;
  output: string;
  latency_ms: number;
  ttft_ms: number | null;
  tokens: { prompt: number | null; completion: number | null; total: number | null };
  record: UsageRecord | null;
  error: string | null;
}

export interface RequestsAnswer {
  requests: UsageRecord[];
  next_cursor: string | null;
}

export interface RequestsQuery {
  limit?: number;
  cursor?: string;
  user?: string;
  team?: string;
  model?: string;
  outcome?: string;
  since?: string;
}

export type QuotaWindow = 'minute' | 'day' | 'month';

/** Where one limit of a scope stands in its current window. */
export interface QuotaLimit {
  name: string;
  window: QuotaWindow;
  limit: number;
  used: number;
  reserved: number;
  remaining: number;
  reset: string;
  reset_in_s: number;
}

export interface QuotaScope {
  rule: string;
  scope: string;
  limits: QuotaLimit[];
}

/** A rule as the config file writes it: `rule` and its user or team and limits. */
export interface QuotaRuleRow {
  rule: string;
  user?: string;
  team?: string;
  [limit: string]: string | number | undefined;
}

export interface QuotasAnswer {
  rules: QuotaRuleRow[];
  scopes: QuotaScope[];
}
