import { beforeAll, describe, expect, it, vi } from "vitest";

const store = new Map<string, string>();
let auth: typeof import("./auth");

beforeAll(async () => {
  vi.stubGlobal("sessionStorage", {
    getItem: (k: string) => store.get(k) ?? null, setItem: (k: string, v: string) => store.set(k, v),
    removeItem: (k: string) => store.delete(k),
  });
  auth = await import("./auth");
});

describe("session", () => {
  it("keeps the token in this tab's storage and tells listeners when it ends", () => {
    const seen: (string | undefined)[] = [];
    const off = auth.onSessionChange((s, reason) => seen.push(s ? `in:${s.username}` : `out:${reason}`));
    auth.signIn("tok", "alice", 3600);
    expect(auth.token()).toBe("tok");
    expect(JSON.parse(store.get("llmtuner.session")!).username).toBe("alice");
    auth.signOut(auth.EXPIRED);
    expect(auth.token()).toBeUndefined();
    expect(store.has("llmtuner.session")).toBe(false);
    expect(seen).toEqual(["in:alice", `out:${auth.EXPIRED}`]);
    off();
  });
  it("an expired token is dropped before it is sent", () => {
    auth.signIn("old", "bob", 60, Date.now() - 61_000);
    const reasons: (string | undefined)[] = [];
    const off = auth.onSessionChange((_, r) => reasons.push(r));
    expect(auth.token()).toBeUndefined();
    expect(reasons).toEqual([auth.EXPIRED]);
    off();
  });
});
