// Spend per day for the usage chart, from GET /api/usage's per-item totals: a job's or an
// evaluation's cost on the day it was created, an endpoint's accrued cost spread evenly over the
// time it was up (its price is per hour), up to its deletion or now.

type Dated = { created_at: string; cost: number };
type Up = { created_at: string; deleted_at?: string | null; accrued_cost: number };

const DAY = 86_400_000;
const dayOf = (t: number) => Math.floor(t / DAY) * DAY;

export function dailySpend(jobs: Dated[], endpoints: Up[], evaluations: Dated[], now = Date.now(), days = 30):
  { days: number[]; training: number[]; inference: number[]; evaluation: number[] } {
  const end = dayOf(now);
  const xs = Array.from({ length: days }, (_, i) => end - (days - 1 - i) * DAY);
  const index = (t: number) => Math.round((dayOf(t) - xs[0]) / DAY);
  const zeros = () => xs.map(() => 0);
  const out = { days: xs.map((x) => x / 1000), training: zeros(), inference: zeros(), evaluation: zeros() };
  const add = (arr: number[], t: number, v: number) => {
    const i = index(t);
    if (i >= 0 && i < days) arr[i] += v;
  };
  for (const j of jobs) add(out.training, Date.parse(j.created_at), j.cost);
  for (const e of evaluations) add(out.evaluation, Date.parse(e.created_at), e.cost);
  for (const ep of endpoints) {
    const from = Date.parse(ep.created_at);
    const to = Math.max(from + 1, Math.min(now, ep.deleted_at ? Date.parse(ep.deleted_at) : now));
    for (let d = dayOf(from); d < to; d += DAY) {
      const overlap = Math.min(to, d + DAY) - Math.max(from, d);
      add(out.inference, d, (ep.accrued_cost * overlap) / (to - from));
    }
  }
  return out;
}
