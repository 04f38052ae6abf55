// The JWT lives in memory and in this tab's sessionStorage: a reload keeps you signed in, closing
// the tab signs you out, other tabs and sites never see it (no cookie, so no CSRF). Scripts on the
// page could read it, as they could read any token the page holds in memory; the dashboard loads
// no third-party script (everything is bundled) and React escapes all API text it renders.

const KEY = "llmtuner.session";
export const EXPIRED = "Your session expired; sign in again.";

export type Session = { token: string; username: string; expiresAt: number };

type Listener = (s: Session | null, reason?: string) => void;

let current: Session | null = load();
const listeners = new Set<Listener>();

function load(): Session | null {
  try {
    const raw = sessionStorage.getItem(KEY);
    const s = raw ? (JSON.parse(raw) as Session) : null;
    return s && s.expiresAt > Date.now() ? s : null;
  } catch {
    return null;
  }
}

export function session(): Session | null {
  if (current && current.expiresAt <= Date.now()) signOut(EXPIRED);
  return current;
}

export function token(): string | undefined {
  return session()?.token;
}

export function signIn(token: string, username: string, expiresInSeconds: number, now = Date.now()): Session {
  current = { token, username, expiresAt: now + expiresInSeconds * 1000 };
  try {
    sessionStorage.setItem(KEY, JSON.stringify(current));
  } catch {
    /* private mode: memory only */
  }
  listeners.forEach((l) => l(current));
  return current;
}

export function signOut(reason?: string): void {
  const had = current !== null;
  current = null;
  try {
    sessionStorage.removeItem(KEY);
  } catch {
    /* ignore */
  }
  if (had) listeners.forEach((l) => l(null, reason));
}

export function onSessionChange(l: Listener): () => void {
  listeners.add(l);
  return () => listeners.delete(l);
}
