import { Link } from "wouter";
import { data, sdk } from "../api";
import { PagedTable } from "../components/Table";
import { Chip } from "../components/ui";
import { usePaged } from "../components/usePaged";
import { money, when } from "../lib/format";

export default function Evaluations() {
  const paged = usePaged(["evaluations"],
    (after) => data(sdk.listEvaluationsApiEvaluationsGet({ query: { limit: 20, after } })),
    (rows) => (rows.some((e) => e.status === "Pending" || e.status === "InProgress") ? 3000 : false));
  return (
    <>
      <h1>Evaluations</h1>
      <PagedTable paged={paged} empty={<>No evaluations. Start one with “Evaluate vs base” on a completed <Link href="/jobs">job</Link>.</>}
        head={["Evaluation", "Status", "Model", "Against", "Cost", "Created"]}
        row={(e) => (
          <tr key={e.id}>
            <td><Link href={`/evaluations/${e.id}`} className="mono">{e.id.slice(0, 8)}</Link></td>
            <td><Chip status={e.status} /></td>
            <td className="mono">{e.model}</td>
            <td>{e.compare_with_base ? e.base_model : "—"}</td>
            <td>{money(e.cost)}</td>
            <td>{when(e.created_at)}</td>
          </tr>
        )} />
    </>
  );
}
