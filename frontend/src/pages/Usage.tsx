import { useQuery } from "@tanstack/react-query";
import { lazy, Suspense, useMemo } from "react";
import { Link } from "wouter";
import { data, type GetUsageApiUsageGetResponse as UsageBody, sdk } from "../api";
import { Table } from "../components/Table";
import { Card, Chip, Loaded, Progress, Spinner, Stat } from "../components/ui";
import { duration, money, newestOf, when } from "../lib/format";
import type { Aligned } from "../lib/metrics";

const Chart = lazy(() => import("../components/Chart").then((m) => ({ default: m.Chart })));

// The server adds up spend per UTC day over everything (the lists below are only the newest);
// the chart takes its x values as Unix seconds.
function SpendChart({ u }: { u: UsageBody }) {
  const d = useMemo((): Aligned => [u.daily.map((x) => Date.parse(`${x.day}T00:00:00Z`) / 1000),
    u.daily.map((x) => x.training), u.daily.map((x) => x.inference), u.daily.map((x) => x.evaluation)], [u.daily]);
  return (
    <Card title="Spend per day, last 30 days">
      <Suspense fallback={<Spinner />}>
        <Chart title="USD per day" time names={["training", "inference", "evaluation"]} data={d} />
      </Suspense>
    </Card>
  );
}

function Newest({ shown, count, what }: { shown: number; count: number; what: string }) {
  const line = newestOf(shown, count, what);
  return line && <p className="muted">{line}</p>;
}

export default function Usage() {
  const q = useQuery({ queryKey: ["usage"], queryFn: () => data(sdk.getUsageApiUsageGet()), refetchInterval: 10000 });
  return (
    <>
      <h1>Usage and cost</h1>
      <Loaded q={q}>
        {(u) => (
          <>
            <div className="stats big">
              <Stat label={`This month (${u.month})`} value={money(u.this_month, u.currency)} />
              <Stat label="All time" value={money(u.total, u.currency)} />
              <Stat label="Training" value={money(u.training.total)} />
              <Stat label="Inference" value={money(u.inference.total)} />
              <Stat label="Evaluation" value={money(u.evaluation.total)} />
            </div>
            <SpendChart u={u} />
            <Card title="Budget">
              {u.budget ? (
                <>
                  <Progress value={(100 * u.budget.spent_this_month) / Math.max(1e-9, u.budget.monthly_budget)} label="Budget used" />
                  <p>{money(u.budget.spent_this_month)} of {money(u.budget.monthly_budget)} spent this month; {money(u.budget.remaining)} left.
                    {u.budget.exceeded && <strong className="bad-text"> Budget exceeded: new jobs and deployments are refused.</strong>}</p>
                </>
              ) : <p className="muted">No monthly budget is set for your account (an admin sets it).</p>}
              {u.warnings.map((w, i) => <p key={i} className="notice">{w.message}</p>)}
            </Card>
            <Card title="Training jobs">
              {u.training.jobs.length === 0 ? <p className="muted">No jobs yet.</p> : (
                <Table head={["Job", "Status", "Instance", "Billable", "Cost", "Created"]}>{u.training.jobs.map((j) => (
                  <tr key={j.job_name}><td><Link href={`/jobs/${j.job_name}`} className="mono">{j.job_name}</Link></td>
                    <td><Chip status={j.status} /></td><td>{j.instance_type}</td><td>{duration(j.billable_seconds)}</td>
                    <td>{money(j.cost)}</td><td>{when(j.created_at)}</td></tr>
                ))}</Table>
              )}
              <Newest shown={u.training.jobs.length} count={u.training.count} what="jobs" />
            </Card>
            <Card title="Endpoints">
              {u.inference.endpoints.length === 0 ? <p className="muted">No endpoints yet.</p> : (
                <Table head={["Endpoint", "Status", "Price", "This month", "Accrued", "Created"]}>{u.inference.endpoints.map((e) => (
                  <tr key={e.endpoint_name}><td><Link href={`/endpoints/${e.endpoint_name}`} className="mono">{e.endpoint_name}</Link></td>
                    <td><Chip status={e.status} /></td><td>{e.instance_type} · {money(e.price_per_hour)}/h</td>
                    <td>{money(e.this_month)}</td><td>{money(e.accrued_cost)}</td><td>{when(e.created_at)}</td></tr>
                ))}</Table>
              )}
              <Newest shown={u.inference.endpoints.length} count={u.inference.count} what="endpoints" />
            </Card>
            <Card title="Evaluations">
              {u.evaluation.evaluations.length === 0 ? <p className="muted">No evaluations yet.</p> : (
                <Table head={["Evaluation", "Status", "Billable", "Cost", "Created"]}>{u.evaluation.evaluations.map((e) => (
                  <tr key={e.id}><td><Link href={`/evaluations/${e.id}`} className="mono">{e.id.slice(0, 8)}</Link></td>
                    <td><Chip status={e.status} /></td><td>{duration(e.billable_seconds)}</td>
                    <td>{money(e.cost)}</td><td>{when(e.created_at)}</td></tr>
                ))}</Table>
              )}
              <Newest shown={u.evaluation.evaluations.length} count={u.evaluation.count} what="evaluations" />
            </Card>
          </>
        )}
      </Loaded>
    </>
  );
}
