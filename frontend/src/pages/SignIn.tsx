import { type FormEvent, useState } from "react";
import { data, sdk } from "../api";
import { ErrorBox, Field } from "../components/ui";
import { signIn } from "../lib/auth";
import { fieldError } from "../lib/errors";

export function SignIn({ notice }: { notice?: string }) {
  const [mode, setMode] = useState<"in" | "up">("in");
  const [form, setForm] = useState({ username: "", email: "", password: "" });
  const [error, setError] = useState<unknown>(null);
  const [busy, setBusy] = useState(false);
  const set = (k: keyof typeof form) => (e: { target: { value: string } }) => setForm({ ...form, [k]: e.target.value });

  async function submit(e: FormEvent) {
    e.preventDefault();
    setBusy(true);
    setError(null);
    try {
      const username = form.username.trim().toLowerCase();
      if (mode === "up") await data(sdk.registerApiAuthRegisterPost({ body: { ...form, username } }));
      const t = await data(sdk.tokenApiAuthTokenPost({ body: { username, password: form.password } }));
      signIn(t.access_token, username, t.expires_in);
    } catch (err) {
      setError(err);
      setBusy(false);
    }
  }

  return (
    <main id="main" className="auth">
      <h1>LLM Tuner</h1>
      <p className="muted">Fine-tune open models on your data, deploy them and try them.</p>
      <div className="tabs" role="tablist">
        <button role="tab" aria-selected={mode === "in"} onClick={() => setMode("in")}>Sign in</button>
        <button role="tab" aria-selected={mode === "up"} onClick={() => setMode("up")}>Create account</button>
      </div>
      {notice && <p className="notice" role="status">{notice}</p>}
      <form onSubmit={submit} className="card" aria-label={mode === "in" ? "Sign in" : "Create account"}>
        <Field label="Username" help={mode === "up" ? "lower-case letters, digits, - and _" : undefined}
          error={fieldError(error, "username")}>
          {(id, d) => <input id={id} aria-describedby={d} autoComplete="username" required value={form.username}
            onChange={set("username")} />}
        </Field>
        {mode === "up" && (
          <Field label="Email" error={fieldError(error, "email")}>
            {(id, d) => <input id={id} aria-describedby={d} type="email" autoComplete="email" required
              value={form.email} onChange={set("email")} />}
          </Field>
        )}
        <Field label="Password" help={mode === "up" ? "at least 10 characters" : undefined}
          error={fieldError(error, "password")}>
          {(id, d) => <input id={id} aria-describedby={d} type="password" required value={form.password}
            autoComplete={mode === "up" ? "new-password" : "current-password"} onChange={set("password")} />}
        </Field>
        <ErrorBox error={error} />
        <button className="primary" disabled={busy}>{mode === "in" ? "Sign in" : "Create account"}</button>
      </form>
    </main>
  );
}
