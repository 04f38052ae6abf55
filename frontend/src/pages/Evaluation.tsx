import { useQuery } from "@tanstack/react-query";
import { Link } from "wouter";
import { data, sdk } from "../api";
import { Table } from "../components/Table";
import { Card, Chip, Loaded, Progress, Stat } from "../components/ui";
import { duration, money, num } from "../lib/format";

// The API's `improvement` is tuned minus base, signed so that positive is better (base - tuned for
// perplexity): shown with its sign, green when better.
const signed = (v: number | null | undefined) => (v === null || v === undefined ? "—" : `${v > 0 ? "+" : ""}${num(v)}`);

export default function Evaluation({ id }: { id: string }) {
  const q = useQuery({
    queryKey: ["evaluation", id],
    queryFn: () => data(sdk.getEvaluationApiEvaluationsEvaluationIdGet({ path: { evaluation_id: id } })),
    refetchInterval: (query) => (["Pending", "InProgress"].includes(query.state.data?.status ?? "") ? 2000 : false),
  });
  const metrics = useQuery({ queryKey: ["eval-metrics"], staleTime: Infinity,
    queryFn: () => data(sdk.listMetricsApiEvaluationsMetricsGet()) });
  const info = (m: string) => metrics.data?.data.find((x) => x.name === m);
  return (
    <>
      <p><Link href="/evaluations">← Evaluations</Link></p>
      <Loaded q={q}>
        {(e) => {
          const r = e.results;
          const g = r?.general_capability;
          return (
            <>
              <h1>Evaluation <span className="mono">{e.id.slice(0, 8)}</span> <Chip status={e.status} /></h1>
              <div className="stats">
                <Stat label="Tuned" value={<Link href={`/jobs/${e.job_name}`}>{e.model}</Link>} />
                <Stat label="Base" value={e.base_model} />
                <Stat label="Data" value={e.dataset} />
                <Stat label="Cost" value={`${money(e.cost)} · ${duration(e.billable_seconds)}`} />
              </div>
              {e.error && <div className="error" role="alert"><strong>{e.error.code}: </strong>{e.error.message}</div>}
              {e.progress && e.status !== "Completed" && (
                <Card title="Progress">
                  <Progress value={(100 * e.progress.done) / Math.max(1, e.progress.total)} label="Evaluation progress" />
                  <p className="muted">{e.progress.phase} {e.progress.model} · {e.progress.done} / {e.progress.total}</p>
                </Card>
              )}
              {r && (
                <Card title="Tuned vs base">
                  <Table head={["Metric", "Base", "Tuned", "Improvement"]}>
                        {Object.keys(r.tuned).map((m) => {
                          const better = info(m)?.higher_is_better;
                          const imp = r.improvement?.[m];
                          const good = imp === null || imp === undefined || imp === 0 ? "" : imp > 0 ? "ok-text" : "bad-text";
                          return (
                            <tr key={m}>
                              <td title={info(m)?.description}>{m}{better !== undefined && better !== null && <span className="muted"> ({better ? "↑" : "↓"} better)</span>}</td>
                              <td>{num(r.base?.[m])}</td>
                              <td><strong>{num(r.tuned[m])}</strong></td>
                              <td className={good}>{signed(imp)}</td>
                            </tr>
                          );
                        })}
                  </Table>
                </Card>
              )}
              {g && (
                <Card title="General-capability probe (forgetting)">
                  <div className="stats">
                    <Stat label="Base" value={g.base ? `${g.base.passed} / ${g.base.total}` : "—"} />
                    <Stat label="Tuned" value={`${g.tuned.passed} / ${g.tuned.total}`} />
                    <Stat label="Forgetting" value={g.forgetting === null ? "—" : g.forgetting ? "yes" : "no"} />
                  </div>
                </Card>
              )}
              {r && (r.samples ?? []).length > 0 && (
                <Card title="Sample outputs">
                  {(r.samples ?? []).map((s, i) => (
                    <div key={i} className="sample">
                      <p><span className="role">prompt</span> {s.prompt}</p>
                      <div className="side-by-side">
                        <div><h3>Base</h3><p>{s.base_output ?? "—"}</p></div>
                        <div><h3>Tuned</h3><p>{s.tuned_output}</p></div>
                        <div><h3>Reference</h3><p>{s.reference}</p></div>
                      </div>
                    </div>
                  ))}
                </Card>
              )}
            </>
          );
        }}
      </Loaded>
    </>
  );
}
