import { DependencyList, useEffect, useState } from 'react';

export type Loaded<T> =
  | { state: 'loading'; data?: undefined; error?: undefined }
  | { state: 'done'; data: T; error?: undefined }
  | { state: 'error'; data?: T; error: Error };

/**
 * Runs `load` whenever `deps` change (the panel bumps a refresh counter in them), aborting the
 * previous call and the last one on unmount. The last answer stays on screen while the next loads.
 */
export function useOps<T>(load: (signal: AbortSignal) => Promise<T>, deps: DependencyList): Loaded<T> {
  const [result, setResult] = useState<Loaded<T>>({ state: 'loading' });
  useEffect(() => {
    const ctl = new AbortController();
    load(ctl.signal).then(
      (data) => {
        if (!ctl.signal.aborted) {
          setResult({ state: 'done', data });
        }
      },
      (error: Error) => {
        if (!ctl.signal.aborted) {
          setResult((prev) => ({ state: 'error', error, data: prev.data }));
        }
      }
    );
    return () => ctl.abort();
    // eslint-disable-next-line react-hooks/exhaustive-deps
  }, deps);
  return result;
}
