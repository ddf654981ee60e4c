// Number and time formatting shared by the sections. "–" stands for "no sample" (null), never 0.

export const DASH = '–';

export function ms(v: number | null | undefined): string {
  if (v === null || v === undefined) {
    return DASH;
  }
  return v >= 1000 ? `${(v / 1000).toFixed(2)} s` : `${v.toFixed(v < 10 ? 1 : 0)} ms`;
}

export function pct(v: number | null | undefined): string {
  if (v === null || v === undefined) {
    return DASH;
  }
  const p = v * 100;
  return `${p.toFixed(p !== 0 && p < 10 ? 1 : 0)}%`;
}

export function count(v: number | null | undefined): string {
  if (v === null || v === undefined) {
    return DASH;
  }
  if (v >= 1e6) {
    return `${(v / 1e6).toFixed(1)}M`;
  }
  if (v >= 1e4) {
    return `${(v / 1e3).toFixed(1)}k`;
  }
  return String(v);
}

/** A whole number in full, with thousands separators: quota usage is read against its limit exactly. */
export function exact(v: number): string {
  return v.toLocaleString('en-US');
}

export function duration(seconds: number): string {
  if (seconds < 60) {
    return `${Math.floor(seconds)} s`;
  }
  if (seconds < 3600) {
    return `${Math.floor(seconds / 60)} min`;
  }
  if (seconds < 86400) {
    return `${(seconds / 3600).toFixed(1)} h`;
  }
  return `${(seconds / 86400).toFixed(1)} d`;
}

/** "13:05:00" for today's times, "2026-12-01 13:05" for older ones, in UTC like the API. */
export function time(iso: string | null | undefined, now: Date = new Date()): string {
  if (!iso) {
    return DASH;
  }
  const d = new Date(iso);
  if (isNaN(d.getTime())) {
    return iso;
  }
  const s = d.toISOString();
  return s.slice(0, 10) === now.toISOString().slice(0, 10) ? s.slice(11, 19) : `${s.slice(0, 10)} ${s.slice(11, 16)}`;
}

/** A window's bounds, both with their date so "13:05 – 13:05" never reads as an empty window. */
export function span(since: string, until: string): string {
  const full = (iso: string) => {
    const d = new Date(iso);
    return isNaN(d.getTime()) ? iso : `${d.toISOString().slice(0, 10)} ${d.toISOString().slice(11, 16)}`;
  };
  return `${full(since)} – ${full(until)} UTC`;
}
