export function money(v: number | null | undefined, currency = "USD"): string {
  if (v === null || v === undefined || Number.isNaN(v)) return "—";
  const digits = v !== 0 && Math.abs(v) < 0.01 ? 4 : 2;
  return new Intl.NumberFormat("en-US", { style: "currency", currency, minimumFractionDigits: digits,
    maximumFractionDigits: digits }).format(v);
}

export function bytes(n: number): string {
  const units = ["B", "KB", "MB", "GB"];
  let i = 0;
  let v = n;
  while (v >= 1024 && i < units.length - 1) {
    v /= 1024;
    i++;
  }
  return `${i === 0 ? v : v.toFixed(1)} ${units[i]}`;
}

export function duration(seconds: number | null | undefined): string {
  if (seconds === null || seconds === undefined) return "—";
  const s = Math.max(0, Math.round(seconds));
  if (s < 60) return `${s}s`;
  const m = Math.floor(s / 60);
  if (m < 60) return `${m}m ${s % 60}s`;
  return `${Math.floor(m / 60)}h ${m % 60}m`;
}

export function when(iso: string | null | undefined): string {
  if (!iso) return "—";
  const d = new Date(iso);
  return Number.isNaN(d.getTime()) ? iso : d.toLocaleString(undefined, { dateStyle: "medium", timeStyle: "short" });
}

/** "The 20 newest of 1,000 jobs." for a list the API cut short; null when it lists them all. */
export function newestOf(shown: number, count: number, what: string): string | null {
  return count > shown ? `The ${shown} newest of ${count.toLocaleString("en-US")} ${what}.` : null;
}

export function num(v: number | null | undefined, digits = 4): string {
  if (v === null || v === undefined) return "—";
  if (Number.isInteger(v)) return String(v);
  return Math.abs(v) < 1e-3 ? v.toExponential(2) : String(Number(v.toPrecision(digits)));
}

/** Status words of jobs, endpoints and evaluations, mapped to a chip colour. */
export function tone(status: string): "ok" | "run" | "bad" | "idle" {
  if (["Completed", "InService", "valid", "ready"].includes(status)) return "ok";
  if (["Failed", "invalid", "OutOfService"].includes(status)) return "bad";
  if (["InProgress", "Creating", "Updating", "Pending", "Stopping", "Deleting", "Starting"].includes(status)) return "run";
  return "idle";
}

/** A model name for a job's deployment or registration: the API's pattern, at most 50 characters. */
export function modelNameFor(jobName: string): string {
  const base = jobName.replace(/^llm-tune-/, "").replace(/[^a-zA-Z0-9-]/g, "-").slice(0, 50);
  return base.replace(/^-+|-+$/g, "").replace(/-{2,}/g, "-") || "my-model";
}
