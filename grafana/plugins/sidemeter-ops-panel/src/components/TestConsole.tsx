import React, { useEffect, useRef, useState } from 'react';
import { css } from '@emotion/css';
import { GrafanaTheme2 } from '@grafana/data';
import { Button, Input, TextArea, useStyles2 } from '@grafana/ui';

import type { Dialect, TestAnswer, UsageRecord } from '../api/contract';
import type { OpsApi } from '../api/opsApi';
import { count, ms } from '../format';
import { ErrorState, Muted } from './states';

const getStyles = (theme: GrafanaTheme2) => ({
  form: css({ display: 'flex', flexWrap: 'wrap', gap: theme.spacing(1), alignItems: 'flex-end' }),
  field: css({ display: 'flex', flexDirection: 'column', gap: theme.spacing(0.25), minWidth: 140, flex: '1 1 140px' }),
  prompt: css({ flex: '3 1 240px' }),
  label: css({ fontSize: theme.typography.bodySmall.fontSize, color: theme.colors.text.secondary }),
  select: css({
    height: theme.spacing(theme.components.height.md),
    background: theme.components.input.background,
    color: theme.components.input.text,
    border: `1px solid ${theme.components.input.borderColor}`,
    borderRadius: theme.shape.radius.default,
    padding: theme.spacing(0, 1),
  }),
  output: css({
    whiteSpace: 'pre-wrap',
    background: theme.colors.background.secondary,
    padding: theme.spacing(1),
    borderRadius: theme.shape.radius.default,
    margin: theme.spacing(1, 0),
    maxHeight: 160,
    overflowY: 'auto',
  }),
  facts: css({
    display: 'flex',
    flexWrap: 'wrap',
    gap: theme.spacing(2),
    fontSize: theme.typography.bodySmall.fontSize,
  }),
  record: css({
    display: 'grid',
    gridTemplateColumns: 'max-content 1fr',
    columnGap: theme.spacing(2),
    fontSize: theme.typography.bodySmall.fontSize,
    margin: theme.spacing(1, 0, 0),
    dt: { color: theme.colors.text.secondary },
    dd: { margin: 0, wordBreak: 'break-all' },
  }),
});

export function RecordView({ record }: { record: UsageRecord }) {
  const s = useStyles2(getStyles);
  const rows = Object.entries(record).filter(([, v]) => v !== null && v !== undefined);
  return (
    <dl className={s.record} data-testid="record">
      {rows.map(([k, v]) => (
        <React.Fragment key={k}>
          <dt>{k}</dt>
          <dd data-testid={`record-${k}`}>{String(v)}</dd>
        </React.Fragment>
      ))}
    </dl>
  );
}

type Run<T> = { state: 'idle' } | { state: 'running' } | { state: 'done'; data: T } | { state: 'error'; error: Error };

/** One call at a time per button; a new click or unmount aborts the call before it. */
function useRun<T>(): [Run<T>, (call: (signal: AbortSignal) => Promise<T>) => Promise<T | undefined>] {
  const [run, setRun] = useState<Run<T>>({ state: 'idle' });
  const ctl = useRef<AbortController | null>(null);
  useEffect(() => () => ctl.current?.abort(), []);
  const start = async (call: (signal: AbortSignal) => Promise<T>) => {
    ctl.current?.abort();
    const mine = new AbortController();
    ctl.current = mine;
    setRun({ state: 'running' });
    try {
      const data = await call(mine.signal);
      if (!mine.signal.aborted) {
        setRun({ state: 'done', data });
      }
      return data;
    } catch (error) {
      if (!mine.signal.aborted) {
        setRun({ state: 'error', error: error as Error });
      }
      return undefined;
    }
  };
  return [run, start];
}

export interface TestConsoleProps {
  api: OpsApi;
  /** The upstreams' models (from /ops/services); empty when unknown, then the model is typed. */
  models: string[];
  dialect: Dialect;
}

export function TestConsole({ api, models, dialect }: TestConsoleProps) {
  const s = useStyles2(getStyles);
  const [picked, setModel] = useState('');
  // The services' models arrive after the first render: until one is picked, the first is chosen.
  const model = picked || models[0] || '';
  const [prompt, setPrompt] = useState('Say hello in five words.');
  const [lookupId, setLookupId] = useState('');
  const [test, runTest] = useRun<TestAnswer>();
  const [lookup, runLookup] = useRun<UsageRecord>();

  const onRun = async () => {
    const answer = await runTest((signal) =>
      api.test({ model, prompt, stream: false, max_tokens: 64, dialect }, signal)
    );
    if (answer) {
      // Trace the test by its id: the record the sidecar stored for it.
      setLookupId(answer.request_id);
      await runLookup((signal) => api.record(answer.request_id, signal));
    }
  };
  const onLookup = () => runLookup((signal) => api.record(lookupId.trim(), signal));

  return (
    <div>
      <div className={s.form}>
        <label className={s.field}>
          <span className={s.label}>Model</span>
          {models.length ? (
            <select className={s.select} value={model} onChange={(e) => setModel(e.target.value)} aria-label="Model">
              {models.map((m) => (
                <option key={m} value={m}>
                  {m}
                </option>
              ))}
            </select>
          ) : (
            <Input
              value={model}
              onChange={(e) => setModel(e.currentTarget.value)}
              aria-label="Model"
              placeholder="llama3.2"
            />
          )}
        </label>
        <label className={`${s.field} ${s.prompt}`}>
          <span className={s.label}>Prompt</span>
          <TextArea rows={1} value={prompt} onChange={(e) => setPrompt(e.currentTarget.value)} aria-label="Prompt" />
        </label>
        <Button onClick={onRun} disabled={!model || !prompt || test.state === 'running'} icon="play">
          {test.state === 'running' ? 'Running…' : 'Run test'}
        </Button>
      </div>

      {test.state === 'error' && <ErrorState error={test.error} what="the test prediction" />}
      {test.state === 'done' && (
        <div data-testid="test-result">
          <pre className={s.output} data-testid="test-output">
            {test.data.ok ? test.data.output || '(empty output)' : `Failed (${test.data.status}): ${test.data.error}`}
          </pre>
          <div className={s.facts}>
            <span>status {test.data.status}</span>
            <span>latency {ms(test.data.latency_ms)}</span>
            <span>TTFT {ms(test.data.ttft_ms)}</span>
            <span>
              tokens {count(test.data.tokens.prompt)} in / {count(test.data.tokens.completion)} out
            </span>
            <span>
              request id <code data-testid="test-request-id">{test.data.request_id}</code>
            </span>
          </div>
        </div>
      )}

      <div className={s.form} style={{ marginTop: 8 }}>
        <label className={s.field}>
          <span className={s.label}>Request id</span>
          <Input value={lookupId} onChange={(e) => setLookupId(e.currentTarget.value)} aria-label="Request id" />
        </label>
        <Button variant="secondary" onClick={onLookup} disabled={!lookupId.trim() || lookup.state === 'running'}>
          Look up
        </Button>
      </div>
      {lookup.state === 'running' && <Muted>Looking up…</Muted>}
      {lookup.state === 'error' && <ErrorState error={lookup.error} what="the request" lookup />}
      {lookup.state === 'done' && <RecordView record={lookup.data} />}
    </div>
  );
}
