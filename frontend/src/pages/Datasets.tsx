import { useQueryClient } from "@tanstack/react-query";
import { type DragEvent, useRef, useState } from "react";
import { Link, useLocation } from "wouter";
import { data, sdk } from "../api";
import { useBaseModels } from "../components/queries";
import { PagedTable } from "../components/Table";
import { Card, Chip, ErrorBox, Field, Progress } from "../components/ui";
import { usePaged } from "../components/usePaged";
import { fieldError } from "../lib/errors";
import { bytes, when } from "../lib/format";
import { uploadDataset } from "../lib/upload";

function DropZone() {
  const input = useRef<HTMLInputElement>(null);
  const models = useBaseModels();
  const [tokenizer, setTokenizer] = useState("");
  const [opts, setOpts] = useState({ name: "", format: "", prompt_column: "", response_column: "" });
  const [over, setOver] = useState(false);
  const [progress, setProgress] = useState<number | null>(null);
  const [error, setError] = useState<unknown>(null);
  const [, go] = useLocation();
  const qc = useQueryClient();

  async function send(file: File | undefined) {
    if (!file) return;
    setError(null);
    setProgress(0);
    try {
      const ds = await uploadDataset(file, setProgress, { ...opts, base_model: tokenizer || models.data?.[0]?.id || "" });
      await qc.invalidateQueries({ queryKey: ["datasets"] });
      go(`/datasets/${ds.id}`);
    } catch (e) {
      setError(e);
    } finally {
      setProgress(null);
    }
  }

  const drop = (e: DragEvent) => {
    e.preventDefault();
    setOver(false);
    void send(e.dataTransfer.files[0]);
  };
  return (
    <div>
      <div className={`drop${over ? " over" : ""}`} onDragOver={(e) => { e.preventDefault(); setOver(true); }}
        onDragLeave={() => setOver(false)} onDrop={drop}>
        <p><strong>Drop a dataset here</strong> or</p>
        <button className="primary" onClick={() => input.current?.click()} disabled={progress !== null}>
          Choose a file…
        </button>
        <input ref={input} type="file" hidden aria-label="Dataset file" accept=".jsonl,.json,.csv,.tsv,.txt"
          data-testid="dataset-file" onChange={(e) => { void send(e.target.files?.[0]); e.target.value = ""; }} />
        <p className="muted">JSONL or JSON (prompt/response, Alpaca, OpenAI messages, ShareGPT, text), CSV/TSV, or plain text.</p>
        <div className="tokenizer">
          <Field label="Count tokens with the tokenizer of" help="for the token statistics against the max length">
            {(id, d) => <select id={id} aria-describedby={d} value={tokenizer || models.data?.[0]?.id || ""}
              onChange={(e) => setTokenizer(e.target.value)}>
              {models.data?.map((m) => <option key={m.id}>{m.id}</option>)}
            </select>}
          </Field>
        </div>
        <details className="upload-options">
          <summary>Options</summary>
          <div className="grid">
            {([["name", "Name", "default: the file's name"], ["format", "Format", "default: detected (e.g. alpaca, openai_chat, sharegpt, csv, txt)"],
              ["prompt_column", "CSV prompt column", "default: detected"], ["response_column", "CSV response column", "default: detected"]] as const)
              .map(([k, label, help]) => (
                <Field key={k} label={label} help={help} error={fieldError(error, k)}>
                  {(id, d) => <input id={id} aria-describedby={d} value={opts[k]} onChange={(e) => setOpts({ ...opts, [k]: e.target.value })} />}
                </Field>
              ))}
          </div>
        </details>
        {progress !== null && (
          <div className="upload-progress">
            <Progress value={progress * 100} label="Upload progress" />
            <span className="muted">{progress < 1 ? `Uploading… ${Math.round(progress * 100)}%` : "Validating…"}</span>
          </div>
        )}
      </div>
      <ErrorBox error={error} title="Upload failed" />
    </div>
  );
}

export default function Datasets() {
  const paged = usePaged(["datasets"], (after) => data(sdk.listDatasetsApiDatasetsGet({ query: { limit: 20, after } })));
  return (
    <>
      <h1>Datasets</h1>
      <Card title="Upload"><DropZone /></Card>
      <PagedTable title="Your datasets" paged={paged} empty="No datasets yet: drop a file above."
        head={["Name", "Status", "Format", "Examples", "Size", "Uploaded"]}
        row={(ds) => (
          <tr key={ds.id}>
            <td><Link href={`/datasets/${ds.id}`}>{ds.name}</Link></td>
            <td><Chip status={ds.status} /></td>
            <td>{ds.format ?? "—"}</td>
            <td>{ds.num_examples}</td>
            <td>{bytes(ds.size_bytes)}</td>
            <td>{when(ds.created_at)}</td>
          </tr>
        )} />
    </>
  );
}
