import { keepPreviousData, useQuery } from "@tanstack/react-query";
import { type FormEvent, useRef, useState } from "react";
import { Link } from "wouter";
import { data, sdk } from "../api";
import { Timeline } from "../components/Timeline";
import { Card, Chip, ErrorBox, Field, Loaded, Stat } from "../components/ui";
import { type Params, reply, type Turn } from "../lib/chat";
import { money, when } from "../lib/format";

const PARAMS: { key: keyof Params; label: string; help: string; step: string }[] = [
  { key: "max_new_tokens", label: "Max new tokens", help: "1 to 4096", step: "1" },
  { key: "temperature", label: "Temperature", help: "0 = greedy; higher = more varied", step: "0.1" },
  { key: "top_p", label: "Top p", help: "nucleus sampling, (0, 1]", step: "0.05" },
  { key: "top_k", label: "Top k", help: "0 = off", step: "1" },
  { key: "repetition_penalty", label: "Repetition penalty", help: "1 = off", step: "0.05" },
];

function Chat({ endpoint, model, ready }: { endpoint: string; model: string; ready: boolean }) {
  const [turns, setTurns] = useState<Turn[]>([]);
  const [input, setInput] = useState("");
  const [params, setParams] = useState<Params>({ max_new_tokens: 64, temperature: 0, top_p: 1, top_k: 0, repetition_penalty: 1 });
  const [busy, setBusy] = useState(false);
  const [error, setError] = useState<unknown>(null);
  const [mode, setMode] = useState("");
  const abort = useRef<AbortController | null>(null);

  async function send(e: FormEvent) {
    e.preventDefault();
    const text = input.trim();
    if (!text || busy) return;
    const history: Turn[] = [...turns, { role: "user", content: text }];
    setTurns([...history, { role: "assistant", content: "" }]);
    setInput("");
    setBusy(true);
    setError(null);
    abort.current = new AbortController();
    try {
      const r = await reply(endpoint, model, history, params,
        (soFar) => setTurns([...history, { role: "assistant", content: soFar }]), abort.current.signal);
      setTurns([...history, { role: "assistant", content: r.text || "(empty reply)" }]);
      setMode(r.streamed ? "streamed via /v1/chat/completions" : "via /api/invoke-model (last message only)");
    } catch (err) {
      setError(err);
      setTurns(history);
    } finally {
      setBusy(false);
    }
  }

  return (
    <div className="playground">
      <Card title="Chat" actions={<button className="link" onClick={() => setTurns([])} disabled={busy}>Clear</button>}>
        <ol className="chat" aria-live="polite" aria-label="Conversation">
          {turns.length === 0 && <li className="muted">Say something to the model.</li>}
          {turns.map((t, i) => <li key={i} className={`turn turn-${t.role}`}><span className="role">{t.role}</span><p>{t.content || "…"}</p></li>)}
        </ol>
        <ErrorBox error={error} />
        <form onSubmit={send} className="chat-input">
          <label htmlFor="prompt" className="sr-only">Message</label>
          <textarea id="prompt" rows={2} value={input} placeholder={ready ? "Type a message; Enter sends, Shift+Enter breaks the line" : "The endpoint is not InService yet"}
            onChange={(e) => setInput(e.target.value)}
            onKeyDown={(e) => { if (e.key === "Enter" && !e.shiftKey) { e.preventDefault(); void send(e); } }} />
          {busy ? <button type="button" onClick={() => abort.current?.abort()}>Stop</button>
            : <button className="primary" disabled={!ready || !input.trim()}>Send</button>}
        </form>
        {mode && <p className="muted small chat-mode">Last reply {mode}.</p>}
      </Card>
      <Card title="Generation">
        {PARAMS.map((p) => (
          <Field key={p.key} label={p.label} help={p.help}>
            {(id, d) => <input id={id} aria-describedby={d} type="number" step={p.step} value={params[p.key] ?? ""}
              onChange={(e) => setParams({ ...params, [p.key]: Number(e.target.value) })} />}
          </Field>
        ))}
        <Field label="Seed" help="empty: random">
          {(id, d) => <input id={id} aria-describedby={d} type="number" value={params.seed ?? ""}
            onChange={(e) => setParams({ ...params, seed: e.target.value === "" ? undefined : Number(e.target.value) })} />}
        </Field>
      </Card>
    </div>
  );
}

function Events({ name, status }: { name: string; status: string }) {
  // Keyed by status: a status change brings its event at once.
  const changing = status !== "InService" && status !== "Failed";
  return <Timeline q={useQuery({ queryKey: ["endpoint", name, "events", status], placeholderData: keepPreviousData,
    refetchInterval: changing ? 2000 : 15000,
    queryFn: () => data(sdk.endpointEventsApiEndpointEndpointNameEventsGet({ path: { endpoint_name: name } })) })} />;
}

export default function Playground({ name }: { name: string }) {
  const q = useQuery({
    queryKey: ["endpoint", name],
    queryFn: () => data(sdk.endpointStatusApiEndpointStatusEndpointNameGet({ path: { endpoint_name: name } })),
    refetchInterval: (query) => (query.state.data?.status === "InService" ? 15000 : 2000),
  });
  return (
    <>
      <p><Link href="/endpoints">← Endpoints</Link></p>
      <Loaded q={q}>
        {(e) => (
          <>
            <h1 className="mono job-title">{e.endpoint_name} <Chip status={e.status} /></h1>
            {e.failure_reason && <div className="error" role="alert">{e.failure_reason}</div>}
            <div className="stats">
              <Stat label="Model" value={e.job_name ? <Link href={`/jobs/${e.job_name}`}>{e.model_name}</Link> : e.model_name} />
              <Stat label="Instance" value={`${e.instance_type} · ${money(e.estimated_cost_per_hour)}/h`} />
              <Stat label="Cost so far" value={money(e.accrued_cost, e.currency)} />
              <Stat label="In service since" value={when(e.in_service_at)} />
            </div>
            <Chat endpoint={e.endpoint_name} model={e.model_name} ready={e.status === "InService"} />
            <Events name={e.endpoint_name} status={e.status} />
          </>
        )}
      </Loaded>
    </>
  );
}
