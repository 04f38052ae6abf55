import { useMutation, useQuery, useQueryClient } from "@tanstack/react-query";
import { type FormEvent, useEffect, useMemo, useState } from "react";
import { useLocation, useSearch } from "wouter";
import { data, sdk } from "../api";
import { HyperparametersSchema } from "../client/schemas.gen";
import { useBaseModels, useInstanceTypes } from "../components/queries";
import { Card, ErrorBox, Field as FieldBox, Stat } from "../components/ui";
import { fieldError } from "../lib/errors";
import { duration, money } from "../lib/format";
import { BASIC, bounds, type Field, fields, initial, payload, PRESETS, validate, type Values } from "../lib/hyper";

const FIELDS = fields(HyperparametersSchema);

function useDebounced<T>(value: T, ms: number): T {
  const [v, setV] = useState(value);
  useEffect(() => {
    const t = setTimeout(() => setV(value), ms);
    return () => clearTimeout(t);
  }, [value, ms]);
  return v;
}

function HyperField({ f, values, set, error }: { f: Field; values: Values; set: (k: string, v: string | boolean) => void;
  error?: string | null }) {
  const help = [f.help, bounds(f), f.def !== null && f.def !== undefined ? `default ${String(f.def)}` : ""]
    .filter(Boolean).join(" · ");
  if (f.kind === "boolean") {
    return (
      <div className="field check">
        <label><input type="checkbox" checked={Boolean(values[f.name])} onChange={(e) => set(f.name, e.target.checked)} /> {f.name}</label>
        <small className={error ? "field-error" : "muted"}>{error ?? help}</small>
      </div>
    );
  }
  return (
    <FieldBox label={f.name} help={help} error={error}>
      {(id, d) => f.kind === "enum"
        ? <select id={id} aria-describedby={d} value={String(values[f.name])} onChange={(e) => set(f.name, e.target.value)}>
            {f.nullable && <option value="">{f.def === null ? "unset (server default)" : ""}</option>}
            {f.options.map((o) => <option key={o}>{o}</option>)}
          </select>
        : <input id={id} aria-describedby={d} name={f.name} inputMode={f.kind === "list" ? "text" : "decimal"}
            aria-invalid={Boolean(error)} value={String(values[f.name])} onChange={(e) => set(f.name, e.target.value)} />}
    </FieldBox>
  );
}

export default function NewJob() {
  const params = new URLSearchParams(useSearch());
  const [, go] = useLocation();
  const qc = useQueryClient();
  const datasets = useQuery({ queryKey: ["datasets", "all-valid"],
    queryFn: () => data(sdk.listDatasetsApiDatasetsGet({ query: { limit: 100 } })) });
  const models = useBaseModels();
  const types = useInstanceTypes();
  const usage = useQuery({ queryKey: ["usage"], queryFn: () => data(sdk.getUsageApiUsageGet()) });
  const [preset, setPreset] = useState("balanced");
  const [values, setValues] = useState<Values>(() => initial(FIELDS));
  const [form, setForm] = useState({ dataset_id: params.get("dataset") ?? "", base_model: "", instance_type: "",
    validation_split: "0.2", name: "" });

  const usable = datasets.data?.data.filter((d) => d.status !== "invalid") ?? [];
  const datasetId = form.dataset_id || usable[0]?.id || "";
  const available = types.data?.types.filter((t) => t.available) ?? [];
  const errors = validate(FIELDS, values);
  const request = useMemo(() => ({
    dataset_id: datasetId, base_model: form.base_model || undefined, instance_type: form.instance_type || undefined,
    validation_split: Number(form.validation_split), hyperparameters: payload(FIELDS, values),
  }), [datasetId, form, values]);
  const debounced = useDebounced(request, 300);
  const estimate = useQuery({
    queryKey: ["cost-estimate", debounced], enabled: Boolean(debounced.dataset_id) && Object.keys(errors).length === 0,
    queryFn: () => data(sdk.costEstimateApiCostEstimatePost({ body: debounced as never })),
  });
  const start = useMutation({
    mutationFn: () => data(sdk.createJobApiTrainingJobPost({ body: { ...request, name: form.name || undefined } as never })),
    onSuccess: async (job) => { await qc.invalidateQueries({ queryKey: ["jobs"] }); go(`/jobs/${job.job_name}`); },
  });

  // An edit answers the last refusal: its message goes until the next try.
  const edited = () => start.error && start.reset();
  const set = (k: string, v: string | boolean) => { edited(); setValues({ ...values, [k]: v }); };
  const setF = (k: keyof typeof form) => (e: { target: { value: string } }) => { edited(); setForm({ ...form, [k]: e.target.value }); };
  const choose = (id: string) => {
    setPreset(id);
    setValues(initial(FIELDS, PRESETS.find((p) => p.id === id)?.values));
  };
  const budget = usage.data?.budget;
  const cost = estimate.data?.estimated_cost ?? 0;
  const overBudget = Boolean(budget && cost > budget.remaining);
  const submit = (e: FormEvent) => {
    e.preventDefault();
    if (Object.keys(errors).length === 0 && !overBudget) start.mutate();
  };
  const apiError = (name: string) => errors[name] ?? fieldError(start.error, name) ?? fieldError(estimate.error, name);

  return (
    <form onSubmit={submit} aria-label="New fine-tune">
      <h1>New fine-tune</h1>
      <Card title="Data and model">
        {datasets.data && usable.length === 0 && <p className="error">Upload a valid dataset first (Datasets page).</p>}
        <div className="grid">
          <FieldBox label="Dataset" error={fieldError(start.error, "dataset_id")}>
            {(id) => <select id={id} value={datasetId} onChange={setF("dataset_id")}>
              {usable.map((d) => <option key={d.id} value={d.id}>{d.name} ({d.num_examples} examples)</option>)}
            </select>}
          </FieldBox>
          <FieldBox label="Base model" help={models.data?.find((m) => m.id === form.base_model)?.description ?? "default: the backend's"}
            error={fieldError(start.error, "base_model")}>
            {(id, d) => <select id={id} aria-describedby={d} value={form.base_model} onChange={setF("base_model")}>
              <option value="">default</option>
              {models.data?.map((m) => <option key={m.id} value={m.id}>{m.id} · {m.task}</option>)}
            </select>}
          </FieldBox>
          <FieldBox label="Instance type" help={`backend: ${types.data?.backend ?? "…"}`} error={fieldError(start.error, "instance_type")}>
            {(id, d) => <select id={id} aria-describedby={d} value={form.instance_type} onChange={setF("instance_type")}>
              <option value="">default</option>
              {available.map((t) => <option key={t.name} value={t.name}>{t.name} · {t.accelerator} · {money(t.training_price_per_hour)}/h</option>)}
            </select>}
          </FieldBox>
          <FieldBox label="Validation split" help="fraction held out for eval loss, 0 to 0.5" error={apiError("validation_split")}>
            {(id, d) => <input id={id} aria-describedby={d} inputMode="decimal" value={form.validation_split} onChange={setF("validation_split")} />}
          </FieldBox>
          <FieldBox label="Job name (optional)" help="letters, digits and dashes; default llm-tune-…" error={fieldError(start.error, "name")}>
            {(id, d) => <input id={id} aria-describedby={d} value={form.name} onChange={setF("name")} />}
          </FieldBox>
        </div>
      </Card>
      <Card title="Hyperparameters">
        <div className="presets" role="radiogroup" aria-label="Presets">
          {PRESETS.map((p) => (
            <button type="button" key={p.id} role="radio" aria-checked={preset === p.id} title={p.help}
              className={preset === p.id ? "selected" : ""} onClick={() => choose(p.id)}>
              {p.label}<small>{p.help}</small>
            </button>
          ))}
        </div>
        <div className="grid">
          {BASIC.map((n) => FIELDS.find((f) => f.name === n)).filter((f) => f !== undefined).map((f) =>
            <HyperField key={f.name} f={f} values={values} set={set} error={apiError(f.name)} />)}
        </div>
        <details>
          <summary>Advanced</summary>
          <div className="grid">
            {FIELDS.filter((f) => !BASIC.includes(f.name)).map((f) =>
              <HyperField key={f.name} f={f} values={values} set={set} error={apiError(f.name)} />)}
          </div>
        </details>
      </Card>
      <Card title="Cost estimate">
        {estimate.isFetching && <p className="muted" role="status">Estimating…</p>}
        <ErrorBox error={estimate.error} />
        {estimate.data && (
          <div className="stats" aria-live="polite">
            <Stat label="Estimated cost" value={money(estimate.data.estimated_cost, estimate.data.currency)} />
            <Stat label="Duration" value={duration(estimate.data.estimated_seconds)} />
            <Stat label="Tokens" value={estimate.data.estimated_tokens.toLocaleString()} />
            <Stat label="Instance" value={`${estimate.data.instance_type} · ${money(estimate.data.price_per_hour)}/h`} />
            <Stat label="Budget left this month" value={budget ? money(budget.remaining) : "no budget set"} />
          </div>
        )}
        {overBudget && <p className="error" role="alert">This estimate exceeds the budget left this month.</p>}
      </Card>
      <ErrorBox error={start.error} title="Could not start" />
      <button className="primary big" disabled={start.isPending || !datasetId || overBudget || Object.keys(errors).length > 0}>
        {start.isPending ? "Starting…" : "Start fine-tuning"}
      </button>
    </form>
  );
}
