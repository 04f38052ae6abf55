import { useMutation, useQuery, useQueryClient } from "@tanstack/react-query";
import { useState } from "react";
import { Link, useLocation } from "wouter";
import { data, sdk } from "../api";
import { useBaseModels } from "../components/queries";
import { Table } from "../components/Table";
import { Card, Chip, ErrorBox, Field, Loaded, Stat } from "../components/ui";
import { bytes, num, when } from "../lib/format";

type Issue = { line: number | null; field: string | null; code: string; message: string; severity?: string };
type TokenStats = { mean: number; p95: number; max: number; max_length: number; over_max_length: number;
  over_max_length_fraction: number; total_tokens: number; sampled: boolean; base_model?: string; error?: string };
type Message = { role: string; content: string };

function Issues({ issues, truncated }: { issues: Issue[]; truncated: number }) {
  if (!issues.length) return <p className="ok-text">No problems found.</p>;
  return (
    <div className="issues">
      <Table head={["Line", "Severity", "Field", "Problem"]}>
        {issues.map((i, n) => (
          <tr key={n} className={i.severity === "warning" ? "warn" : "err"}>
            <td className="mono">{i.line ?? "—"}</td>
            <td><span className={`chip chip-${i.severity === "warning" ? "run" : "bad"}`}>{i.severity ?? "error"}</span></td>
            <td className="mono">{i.field ?? "—"}</td>
            <td>{i.message} <span className="muted mono">{i.code}</span></td>
          </tr>
        ))}
      </Table>
      {truncated > 0 && <p className="muted">…and {truncated} more not listed.</p>}
    </div>
  );
}

function Tokens({ id, stats }: { id: string; stats: TokenStats | null }) {
  const models = useBaseModels();
  const [model, setModel] = useState("");
  const [maxLen, setMaxLen] = useState("");
  const chosen = model || stats?.base_model || models.data?.[0]?.id || "";
  // The upload's statistics are shown as they are; other tokenizers or lengths are counted on demand.
  const q = useQuery({
    queryKey: ["dataset", id, "tokens", chosen, maxLen], enabled: Boolean(chosen) && (!stats || Boolean(model || maxLen)),
    queryFn: async () => (await data(sdk.getDatasetApiDatasetsDatasetIdGet({
      path: { dataset_id: id }, query: { base_model: chosen, max_length: maxLen ? Number(maxLen) : undefined },
    }))).report.token_stats as TokenStats | null,
  });
  const s = q.data ?? stats;
  return (
    <Card title="Token statistics">
      <div className="row">
        <Field label="Tokenizer of base model">
          {(fid) => <select id={fid} value={chosen} onChange={(e) => setModel(e.target.value)}>
            {models.data?.map((m) => <option key={m.id}>{m.id}</option>)}
          </select>}
        </Field>
        <Field label="Max length (tokens)" help="default: the model's">
          {(fid, d) => <input id={fid} aria-describedby={d} type="number" min={16} value={maxLen}
            onChange={(e) => setMaxLen(e.target.value)} />}
        </Field>
      </div>
      <ErrorBox error={q.error} />
      {q.isFetching && <p className="muted">Counting tokens…</p>}
      {s?.error && <p className="error">{s.error}</p>}
      {s && !s.error && (
        <>
          <div className="stats">
            <Stat label="Mean tokens" value={num(s.mean)} />
            <Stat label="p95" value={s.p95} />
            <Stat label="Longest" value={s.max} />
            <Stat label="Total tokens" value={s.total_tokens.toLocaleString()} />
            <Stat label={`Over ${s.max_length}`} value={`${s.over_max_length} (${(s.over_max_length_fraction * 100).toFixed(1)}%)`} />
          </div>
          <div className="bar-compare" aria-hidden>
            <div style={{ width: `${Math.min(100, (s.p95 / s.max_length) * 100)}%` }} title="p95" />
          </div>
          <p className="muted">p95 length against the max length{s.sampled ? " (from a sample)" : ""}; longer examples are truncated.</p>
        </>
      )}
    </Card>
  );
}

function Preview({ id }: { id: string }) {
  const q = useQuery({ queryKey: ["dataset", id, "preview"],
    queryFn: () => data(sdk.previewApiDatasetsDatasetIdPreviewGet({ path: { dataset_id: id }, query: { limit: 5 } })) });
  return (
    <Card title="Preview (as converted for training)">
      <Loaded q={q} empty={(d) => d.data.length === 0 && "No valid records to preview."}>
        {(d) => <ol className="preview">{d.data.map((r, n) => (
          <li key={n}>{((r.messages as Message[] | undefined) ?? [{ role: "text", content: String(r.text ?? "") }]).map((m, k) => (
            <p key={k}><span className={`role role-${m.role}`}>{m.role}</span> {m.content}</p>
          ))}</li>
        ))}</ol>}
      </Loaded>
    </Card>
  );
}

export default function Dataset({ id }: { id: string }) {
  const q = useQuery({ queryKey: ["dataset", id], queryFn: () => data(sdk.getDatasetApiDatasetsDatasetIdGet({ path: { dataset_id: id } })) });
  const qc = useQueryClient();
  const [, go] = useLocation();
  const del = useMutation({
    mutationFn: () => data(sdk.deleteApiDatasetsDatasetIdDelete({ path: { dataset_id: id } })),
    onSuccess: async () => { await qc.invalidateQueries({ queryKey: ["datasets"] }); go("/datasets"); },
  });
  return (
    <Loaded q={q}>
      {(ds) => {
        const r = ds.report as Record<string, unknown>;
        const issues = (r.issues as Issue[] | undefined) ?? [];
        return (
          <>
            <p><Link href="/datasets">← Datasets</Link></p>
            <h1>{ds.name} <Chip status={ds.status} /></h1>
            <div className="actions">
              {ds.status !== "invalid" && <Link className="button primary" href={`/jobs/new?dataset=${ds.id}`}>Fine-tune on it</Link>}
              <button className="danger" disabled={del.isPending}
                onClick={() => confirm(`Delete ${ds.name}?`) && del.mutate()}>Delete</button>
            </div>
            <ErrorBox error={del.error} title="Delete failed" />
            <Card title="Validation report">
              <div className="stats">
                <Stat label="Format" value={String(r.format ?? ds.format ?? "—")} />
                <Stat label="Examples" value={`${r.valid_examples ?? 0} valid of ${r.total_examples ?? 0}`} />
                <Stat label="Errors" value={String(r.errors_count ?? 0)} />
                <Stat label="Warnings" value={String(r.warnings_count ?? 0)} />
                <Stat label="Duplicates" value={String(r.duplicates ?? 0)} />
                <Stat label="Avg prompt / response" value={`${num(r.avg_prompt_length as number, 3)} / ${num(r.avg_response_length as number, 3)} chars`} />
                <Stat label="Size" value={bytes(ds.size_bytes)} />
                <Stat label="Uploaded" value={when(ds.created_at)} />
              </div>
              <Issues issues={issues} truncated={(r.issues_truncated as number) ?? 0} />
            </Card>
            <Tokens id={ds.id} stats={(r.token_stats as TokenStats | null) ?? null} />
            <Preview id={ds.id} />
          </>
        );
      }}
    </Loaded>
  );
}
