import { useMutation, useQuery, useQueryClient } from "@tanstack/react-query";
import { type FormEvent, useEffect, useMemo, useRef, useState } from "react";
import { Link, useLocation } from "wouter";
import { data, sdk, type TrainingJobRead } from "../api";
import { Chart } from "../components/Chart";
import { Timeline } from "../components/Timeline";
import { jobQueries, useInstanceTypes } from "../components/queries";
import { Card, Chip, ErrorBox, Field, Loaded, Progress, Stat } from "../components/ui";
import { fieldError } from "../lib/errors";
import { duration, modelNameFor, money, num, when } from "../lib/format";
import { hasPoints, latest, series } from "../lib/metrics";

const LIVE = ["InProgress", "Stopping"];
const poll = (job?: TrainingJobRead) => (job && LIVE.includes(job.status) ? 2000 : false);

function Charts({ name, job }: { name: string; job?: TrainingJobRead }) {
  const q = useQuery({ ...jobQueries.metrics(name), refetchInterval: poll(job) });
  const points = useMemo(() => q.data ?? [], [q.data]);
  const loss = useMemo(() => series(points, ["train_loss", "eval_loss"]), [points]);
  const lr = useMemo(() => series(points, ["learning_rate"]), [points]);
  const last = latest(points);
  return (
    <Card title="Training curves">
      <Loaded q={q} empty={() => !hasPoints(loss) && (LIVE.includes(job?.status ?? "") ? "Waiting for the first logged step…" : "No metrics were logged.")}>
        {() => (
          <>
            <div className="stats">
              {["train_loss", "eval_loss", "learning_rate"].filter((m) => m in last).map((m) =>
                <Stat key={m} label={m} value={num(last[m])} />)}
            </div>
            <div className="charts">
              <Chart title="Loss" data={loss} names={["train_loss", "eval_loss"]} />
              {hasPoints(lr) && <Chart title="Learning rate" data={lr} names={["learning_rate"]} />}
            </div>
          </>
        )}
      </Loaded>
    </Card>
  );
}

function Events({ name, job }: { name: string; job?: TrainingJobRead }) {
  return <Timeline q={useQuery({ ...jobQueries.events(name), refetchInterval: poll(job) })} />;
}

function Deploy({ name, onDone }: { name: string; onDone: (endpoint: string) => void }) {
  const types = useInstanceTypes();
  const [modelName, setModelName] = useState(modelNameFor(name));
  const [itype, setItype] = useState("ml.g5.xlarge");
  const m = useMutation({
    mutationFn: () => data(sdk.deployModelApiDeployModelPost({ body: { job_name: name, model_name: modelName, instance_type: itype } })),
    onSuccess: (r) => onDone(r.deployment.endpoint_name),
  });
  const submit = (e: FormEvent) => { e.preventDefault(); m.mutate(); };
  return (
    <form className="inline-form" onSubmit={submit} aria-label="Deploy">
      <Field label="Model name" help="the endpoint is {model name}-endpoint" error={fieldError(m.error, "model_name")}>
        {(id, d) => <input id={id} aria-describedby={d} value={modelName} onChange={(e) => setModelName(e.target.value)} />}
      </Field>
      <Field label="Instance type" error={fieldError(m.error, "instance_type")}>
        {(id) => <select id={id} value={itype} onChange={(e) => setItype(e.target.value)}>
          {types.data?.types.filter((t) => t.available && t.inference_price_per_hour !== null).map((t) =>
            <option key={t.name} value={t.name}>{t.name} · {money(t.inference_price_per_hour)}/h</option>)}
        </select>}
      </Field>
      <button className="primary" disabled={m.isPending}>Deploy</button>
      <ErrorBox error={m.error} />
    </form>
  );
}

function Register({ name, onDone }: { name: string; onDone: () => void }) {
  const [form, setForm] = useState({ model_name: modelNameFor(name), description: "", tags: "" });
  const m = useMutation({
    mutationFn: () => data(sdk.createModelApiModelsPost({ body: { job_name: name, model_name: form.model_name,
      description: form.description, tags: form.tags.split(",").map((t) => t.trim()).filter(Boolean) } })),
    onSuccess: onDone,
  });
  const set = (k: keyof typeof form) => (e: { target: { value: string } }) => setForm({ ...form, [k]: e.target.value });
  return (
    <form className="inline-form" onSubmit={(e) => { e.preventDefault(); m.mutate(); }} aria-label="Register">
      <Field label="Model name" error={fieldError(m.error, "model_name")}>{(id) => <input id={id} value={form.model_name} onChange={set("model_name")} />}</Field>
      <Field label="Description" error={fieldError(m.error, "description")}>{(id) => <input id={id} value={form.description} onChange={set("description")} />}</Field>
      <Field label="Tags" help="comma-separated" error={fieldError(m.error, "tags")}>{(id, d) => <input id={id} aria-describedby={d} value={form.tags} onChange={set("tags")} />}</Field>
      <button className="primary" disabled={m.isPending}>Register</button>
      <ErrorBox error={m.error} />
    </form>
  );
}

function Actions({ name }: { name: string }) {
  const qc = useQueryClient();
  const [, go] = useLocation();
  const [open, setOpen] = useState<"deploy" | "register" | null>(null);
  const actions = useQuery(jobQueries.actions(name));
  const can = (a: string) => actions.data?.actions.find((x) => x.name === a);
  const stop = useMutation({ mutationFn: () => data(sdk.stopJobApiTrainingJobJobNameStopPost({ path: { job_name: name } })),
    onSuccess: () => qc.invalidateQueries({ queryKey: ["job", name] }) });
  const download = useMutation({ mutationFn: () => data(sdk.modelDownloadApiModelDownloadJobNameGet({ path: { job_name: name } })),
    onSuccess: (r) => { window.location.href = r.download_url; } });
  const evaluate = useMutation({ mutationFn: () => data(sdk.createEvaluationApiEvaluationsPost({ body: { model: name, compare_with_base: true, max_examples: 20 } })),
    onSuccess: (r) => go(`/evaluations/${r.id}`) });
  const button = (a: string, label: string, onClick: () => void, cls = "") => {
    const x = can(a);
    return <button className={cls} disabled={!x?.available} title={x?.reason ?? undefined} onClick={onClick}>{label}</button>;
  };
  return (
    <>
      <div className="actions">
        {button("deploy", "Deploy…", () => setOpen(open === "deploy" ? null : "deploy"), "primary")}
        {button("evaluate", "Evaluate vs base", () => evaluate.mutate())}
        {button("register", "Register…", () => setOpen(open === "register" ? null : "register"))}
        {button("download", "Download model", () => download.mutate())}
        {button("stop", "Stop", () => confirm(`Stop ${name}?`) && stop.mutate(), "danger")}
      </div>
      {[stop, download, evaluate].map((m, i) => <ErrorBox key={i} error={m.error} />)}
      {open === "deploy" && <Deploy name={name} onDone={(ep) => go(`/endpoints/${ep}`)} />}
      {open === "register" && <Register name={name} onDone={() => go("/models")} />}
    </>
  );
}

function Content({ name, job }: { name: string; job: TrainingJobRead }) {
  const p = job.progress as { step?: number; total_steps?: number; epoch?: number; epochs?: number; percent?: number };
  return (
    <>
      <h1 className="mono job-title">{job.job_name}</h1>
      <p><Chip status={job.status} />{job.secondary_status !== job.status && <span className="muted"> {job.secondary_status}</span>}</p>
      <Actions name={name} />
      {job.error && <div className="error" role="alert"><strong>{job.error.code}: </strong>{job.error.message}</div>}
      <Card title="Progress">
        <Progress value={p.percent ?? (job.status === "Completed" ? 100 : 0)} label="Training progress" />
        <div className="stats">
          <Stat label="Step" value={p.total_steps ? `${p.step ?? 0} / ${p.total_steps}` : "—"} />
          <Stat label="Epoch" value={p.epoch !== undefined ? `${num(p.epoch, 3)}${p.epochs ? ` / ${p.epochs}` : ""}` : "—"} />
          <Stat label={job.actual_cost !== null ? "Cost" : "Estimated cost"} value={money(job.actual_cost ?? job.estimated_cost, job.currency)} />
          <Stat label="Billable time" value={duration(job.billable_seconds)} />
          <Stat label="Base model" value={job.base_model} />
          <Stat label="Instance" value={`${job.instance_type} (${job.backend})`} />
          <Stat label="Dataset" value={job.dataset_id ? <Link href={`/datasets/${job.dataset_id}`}>open</Link> : "deleted"} />
          <Stat label="Started" value={when(job.started_at)} />
        </div>
      </Card>
      <Charts name={name} job={job} />
      <Events name={name} job={job} />
      <Card title="Hyperparameters">
        <dl className="kv">{Object.entries(job.hyperparameters).map(([k, v]) => (
          <div key={k}><dt>{k}</dt><dd className="mono">{JSON.stringify(v)}</dd></div>
        ))}</dl>
      </Card>
    </>
  );
}

export default function Job({ name }: { name: string }) {
  const qc = useQueryClient();
  const q = useQuery({ ...jobQueries.job(name), refetchInterval: (query) => poll(query.state.data) });
  // Metrics, events and actions load beside the job, not after it (they need only its name).
  useQuery(jobQueries.metrics(name));
  useQuery(jobQueries.events(name));
  useQuery(jobQueries.actions(name));
  // A status change brings the last points and events, and changes which actions apply.
  const status = q.data?.status;
  const seen = useRef(status);
  useEffect(() => {
    if (seen.current && status !== seen.current) {
      void qc.invalidateQueries({ predicate: (x) => x.queryKey[0] === "job" && x.queryKey[1] === name && x.queryKey.length > 2 });
    }
    seen.current = status;
  }, [status, name, qc]);
  return (
    <>
      <p><Link href="/jobs">← Jobs</Link></p>
      <Loaded q={q}>{(job) => <Content name={name} job={job} />}</Loaded>
    </>
  );
}
