// Metric points from GET /api/training-job/{name}/metrics, shaped for uPlot: one x axis of steps
// and one y array per series, with gaps (null) where a series has no point at a step.

export type Point = { metric_name: string; step: number | null; value: number };
export type Aligned = [number[], ...(number | null)[][]];

export function series(points: Point[], names: string[]): Aligned {
  const steps = new Set<number>();
  const by = new Map<string, Map<number, number>>(names.map((n) => [n, new Map()]));
  for (const p of points) {
    const m = by.get(p.metric_name);
    if (!m || p.step === null || !Number.isFinite(p.value)) continue;
    m.set(p.step, p.value); // a repeated step (resumed run) keeps its latest value
    steps.add(p.step);
  }
  const xs = [...steps].sort((a, b) => a - b);
  return [xs, ...names.map((n) => xs.map((x) => by.get(n)!.get(x) ?? null))];
}

export function hasPoints(data: Aligned): boolean {
  return data.slice(1).some((ys) => (ys as (number | null)[]).some((v) => v !== null));
}

/** The latest value of each metric (for the numbers beside the charts). */
export function latest(points: Point[]): Record<string, number> {
  const out: Record<string, number> = {};
  const steps = new Map<string, number>();
  for (const p of points) {
    const s = p.step ?? -1;
    if (s >= (steps.get(p.metric_name) ?? -Infinity)) {
      steps.set(p.metric_name, s);
      out[p.metric_name] = p.value;
    }
  }
  return out;
}
