// The hyperparameter form is built from the API's own JSON schema (types, bounds, defaults,
// descriptions), so a new or changed field shows up without touching the page.

type JsonSchema = {
  type?: string; title?: string; description?: string; default?: unknown; enum?: readonly unknown[];
  minimum?: number; maximum?: number; exclusiveMinimum?: number; exclusiveMaximum?: number;
  anyOf?: readonly JsonSchema[]; items?: JsonSchema; properties?: Readonly<Record<string, JsonSchema>>;
};

export type Field = {
  name: string; title: string; kind: "integer" | "number" | "boolean" | "enum" | "list";
  nullable: boolean; def: unknown; help: string; options: string[]; bool?: boolean;
  min?: number; max?: number; exclusiveMin?: number; exclusiveMax?: number;
};

export type Values = Record<string, string | boolean>;

// Shown first; the rest sit under "Advanced".
export const BASIC = ["epochs", "batch_size", "learning_rate", "max_length", "lora_rank", "lora_alpha",
  "lora_dropout", "warmup_ratio", "lr_scheduler_type", "max_steps"];

// Said in a sentence where the schema gives only a title.
const HELP: Record<string, string> = {
  learning_rate: "step size of the optimizer; LoRA usually wants 1e-4 to 5e-4",
  warmup_steps: "steps of linearly rising learning rate at the start",
  warmup_ratio: "warm-up as a fraction of all steps (used when warmup_steps is 0)",
  gradient_accumulation_steps: "micro-batches summed before each optimizer step",
  use_lora: "train small adapter matrices instead of all weights",
  lora_rank: "rank of the adapter matrices: more capacity, more memory",
  lora_alpha: "adapter scaling; alpha / rank multiplies the update",
  lora_dropout: "dropout on the adapter's input",
  lora_target_modules: "comma-separated module names; empty: the base model's defaults",
  weight_decay: "L2 penalty applied by AdamW",
  max_grad_norm: "gradients are clipped to this norm (0: off)",
  lr_scheduler_type: "how the learning rate decays after warm-up",
  early_stopping_patience: "evaluations without improvement before stopping (empty: never)",
  early_stopping_threshold: "smallest eval-loss drop that counts as improvement",
  eval_steps: "evaluate every N steps (empty: once per epoch)",
  save_steps: "checkpoint every N steps (empty: once per epoch)",
  logging_steps: "log loss and learning rate every N steps",
  save_total_limit: "checkpoints kept on disk",
  fp16: "half precision (GPU)", bf16: "bfloat16 precision (recent GPUs)",
  load_in_4bit: "QLoRA: 4-bit base weights (GPU only)",
  train_on_inputs: "also compute the loss on the prompt, not only the response",
  seed: "random seed for shuffling and initialisation",
  merge_adapter: "also save the adapter merged into the base weights",
};

export function fields(schema: JsonSchema): Field[] {
  return Object.entries(schema.properties ?? {}).map(([name, prop]) => {
    const variants = prop.anyOf ?? [prop];
    const nullable = variants.some((v) => v.type === "null");
    const s = variants.find((v) => v.type !== "null") ?? prop;
    // A nullable boolean has three states (unset, true, false): a choice, not a checkbox.
    const bool = s.type === "boolean" && nullable;
    const kind: Field["kind"] = s.enum || bool ? "enum" : s.type === "array" ? "list"
      : s.type === "boolean" ? "boolean" : s.type === "integer" ? "integer" : "number";
    return {
      name, title: prop.title ?? name, kind, nullable, def: prop.default ?? null, bool,
      help: prop.description ?? HELP[name] ?? "", options: bool ? ["true", "false"] : (s.enum ?? []).map(String),
      min: s.minimum, max: s.maximum, exclusiveMin: s.exclusiveMinimum, exclusiveMax: s.exclusiveMaximum,
    };
  });
}

export function bounds(f: Field): string {
  const lo = f.min !== undefined ? `≥ ${f.min}` : f.exclusiveMin !== undefined ? `> ${f.exclusiveMin}` : "";
  const hi = f.max !== undefined ? `≤ ${f.max}` : f.exclusiveMax !== undefined ? `< ${f.exclusiveMax}` : "";
  return [lo, hi].filter(Boolean).join(", ");
}

export function initial(fs: Field[], preset: Record<string, unknown> = {}): Values {
  const out: Values = {};
  for (const f of fs) {
    const v = f.name in preset ? preset[f.name] : f.def;
    out[f.name] = f.kind === "boolean" ? Boolean(v) : v === null || v === undefined ? ""
      : Array.isArray(v) ? v.join(", ") : String(v);
  }
  return out;
}

/** Per-field problems found before sending (the API checks again and names the field). */
export function validate(fs: Field[], values: Values): Record<string, string> {
  const errors: Record<string, string> = {};
  for (const f of fs) {
    const raw = values[f.name];
    if (f.kind === "boolean" || f.kind === "enum" || f.kind === "list") continue;
    const text = String(raw ?? "").trim();
    if (text === "") {
      if (!f.nullable && f.def === null) errors[f.name] = "required";
      continue;
    }
    const v = Number(text);
    if (!Number.isFinite(v)) errors[f.name] = "must be a number";
    else if (f.kind === "integer" && !Number.isInteger(v)) errors[f.name] = "must be a whole number";
    else if ((f.min !== undefined && v < f.min) || (f.max !== undefined && v > f.max)
      || (f.exclusiveMin !== undefined && v <= f.exclusiveMin) || (f.exclusiveMax !== undefined && v >= f.exclusiveMax)) {
      errors[f.name] = `must be ${bounds(f)}`;
    }
  }
  return errors;
}

/** The request's `hyperparameters`: only fields that differ from the API's defaults. */
export function payload(fs: Field[], values: Values): Record<string, unknown> {
  const out: Record<string, unknown> = {};
  for (const f of fs) {
    const raw = values[f.name];
    let v: unknown;
    if (f.kind === "boolean") v = Boolean(raw);
    else if (f.kind === "list") {
      const items = String(raw ?? "").split(",").map((s) => s.trim()).filter(Boolean);
      v = items.length ? items : null;
    } else if (f.kind === "enum") v = raw === "" || raw === undefined ? null : f.bool ? raw === "true" : raw;
    else v = String(raw ?? "").trim() === "" ? null : Number(raw);
    if (JSON.stringify(v) !== JSON.stringify(f.def ?? null)) out[f.name] = v;
  }
  return out;
}

export const PRESETS: { id: string; label: string; help: string; values: Record<string, unknown> }[] = [
  { id: "quick", label: "Quick check", help: "a few fast steps with a high learning rate: try the pipeline end to end",
    values: { epochs: 2, batch_size: 4, learning_rate: 3e-3, logging_steps: 2, max_length: 64 } },
  { id: "balanced", label: "Balanced", help: "the API's defaults: 3 epochs of LoRA rank 16", values: {} },
  { id: "thorough", label: "Thorough", help: "more epochs, a gentler learning rate, a larger adapter",
    values: { epochs: 5, learning_rate: 1e-4, lora_rank: 32, lora_alpha: 64, warmup_ratio: 0.05,
      lr_scheduler_type: "cosine", weight_decay: 0.01 } },
];
