import { type ReactNode, useId } from "react";
import { ApiError, errorText } from "../lib/errors";
import { tone } from "../lib/format";

export function Chip({ status }: { status: string }) {
  return <span className={`chip chip-${tone(status)}`}>{status}</span>;
}

export function Progress({ value, label }: { value: number; label: string }) {
  const pct = Math.max(0, Math.min(100, value));
  return (
    <div className="progress" role="progressbar" aria-label={label} aria-valuemin={0} aria-valuemax={100}
      aria-valuenow={Math.round(pct)}>
      <div style={{ width: `${pct}%` }} />
    </div>
  );
}

export function Spinner({ label = "Loading…" }: { label?: string }) {
  return <p className="muted" role="status" aria-live="polite"><span className="spinner" aria-hidden /> {label}</p>;
}

export function ErrorBox({ error, title }: { error: unknown; title?: string }) {
  if (!error) return null;
  const code = error instanceof ApiError ? error.code : null;
  return (
    <div className="error" role="alert">
      {title && <strong>{title}: </strong>}
      {errorText(error)}
      {code && <span className="muted"> ({code})</span>}
    </div>
  );
}

export function Empty({ children }: { children: ReactNode }) {
  return <div className="empty">{children}</div>;
}

/** Loading, error and empty states of one query, then its content. */
export function Loaded<T>({ q, empty, children }: {
  q: { isPending: boolean; error: unknown; data?: T }; empty?: (d: T) => ReactNode | false; children: (d: T) => ReactNode;
}) {
  if (q.isPending) return <Spinner />;
  if (q.error) return <ErrorBox error={q.error} />;
  const d = q.data as T;
  const e = empty?.(d);
  return <>{e ? <Empty>{e}</Empty> : children(d)}</>;
}

export function Field({ label, help, error, children }: {
  label: string; help?: string; error?: string | null; children: (id: string, describedBy: string) => ReactNode;
}) {
  const id = useId();
  const hid = `${id}-help`;
  return (
    <div className={`field${error ? " invalid" : ""}`}>
      <label htmlFor={id}>{label}</label>
      {children(id, hid)}
      <small id={hid} className={error ? "field-error" : "muted"}>{error ?? help}</small>
    </div>
  );
}

export function Card({ title, actions, children }: { title?: ReactNode; actions?: ReactNode; children: ReactNode }) {
  return (
    <section className="card">
      {(title || actions) && <header className="card-head">{title && <h2>{title}</h2>}<div>{actions}</div></header>}
      {children}
    </section>
  );
}

export function Stat({ label, value }: { label: string; value: ReactNode }) {
  return <div className="stat"><span className="muted">{label}</span><strong>{value}</strong></div>;
}

/** Cursor pagination of the API's lists: {data, has_more, next_cursor}. */
export function Pager({ page, hasMore, onPrev, onNext }: {
  page: number; hasMore: boolean; onPrev: () => void; onNext: () => void;
}) {
  if (page === 0 && !hasMore) return null;
  return (
    <nav className="pager" aria-label="Pages">
      <button onClick={onPrev} disabled={page === 0}>← Newer</button>
      <span className="muted">page {page + 1}</span>
      <button onClick={onNext} disabled={!hasMore}>Older →</button>
    </nav>
  );
}
