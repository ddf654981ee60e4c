import React from 'react';
import { css } from '@emotion/css';
import { GrafanaTheme2 } from '@grafana/data';
import { Alert, LoadingPlaceholder, useStyles2 } from '@grafana/ui';

import { OpsApiError } from '../api/opsApi';
import type { Loaded } from '../api/useOps';

const getStyles = (theme: GrafanaTheme2) => ({
  muted: css({ color: theme.colors.text.secondary, fontSize: theme.typography.bodySmall.fontSize, margin: 0 }),
  alert: css({ marginBottom: theme.spacing(1) }),
});

export function Muted({ children, testId }: { children: React.ReactNode; testId?: string }) {
  const s = useStyles2(getStyles);
  return (
    <p className={s.muted} data-testid={testId}>
      {children}
    </p>
  );
}

/**
 * The error of a section, worded for its reader: unauthorised, not served by this sidecar, or the API's
 * message. `lookup` marks a call where a 404 means the item is unknown, not the endpoint.
 */
export function ErrorState({ error, what, lookup = false }: { error: Error; what: string; lookup?: boolean }) {
  const s = useStyles2(getStyles);
  if (error instanceof OpsApiError && error.unauthorised) {
    return (
      <Alert
        className={s.alert}
        severity="warning"
        title={`Not authorised to read ${what}`}
        data-testid="state-unauthorised"
      >
        {error.message}. Set an ops token carrying the ops role in the panel options.
      </Alert>
    );
  }
  if (error instanceof OpsApiError && error.missing && lookup) {
    return <Muted testId="state-unknown">{error.message}.</Muted>;
  }
  if (error instanceof OpsApiError && error.missing) {
    return <Muted testId="state-missing">Not available: {error.message}.</Muted>;
  }
  return (
    <Alert className={s.alert} severity="error" title={`Could not load ${what}`} data-testid="state-error">
      {error.message}
      {error instanceof OpsApiError && error.allowed?.length ? ` (allowed: ${error.allowed.join(', ')})` : ''}
    </Alert>
  );
}

/**
 * Loading, error and the view itself. After a failed refresh the last answer stays, under the error,
 * so one bad poll does not blank the panel.
 */
export function Section<T>({
  loaded,
  what,
  children,
}: {
  loaded: Loaded<T>;
  what: string;
  children: (data: T) => React.ReactNode;
}) {
  if (loaded.state === 'loading') {
    return <LoadingPlaceholder text={`Loading ${what}…`} data-testid="state-loading" />;
  }
  return (
    <>
      {loaded.state === 'error' && <ErrorState error={loaded.error} what={what} />}
      {loaded.data !== undefined && children(loaded.data)}
    </>
  );
}
