import { useMutation, useQueryClient } from "@tanstack/react-query";
import { Link } from "wouter";
import { data, sdk } from "../api";
import { PagedTable } from "../components/Table";
import { Chip, ErrorBox } from "../components/ui";
import { usePaged } from "../components/usePaged";
import { money, when } from "../lib/format";

const CHANGING = ["Creating", "Updating", "Deleting"];

export default function Endpoints() {
  const qc = useQueryClient();
  const paged = usePaged(["endpoints"],
    (after) => data(sdk.listEndpointsApiEndpointsGet({ query: { limit: 20, after } })),
    (rows) => (rows.some((e) => CHANGING.includes(e.status) || e.status === "InService") ? 5000 : false));
  const del = useMutation({
    mutationFn: (name: string) => data(sdk.deleteEndpointApiEndpointEndpointNameDelete({ path: { endpoint_name: name } })),
    onSuccess: () => qc.invalidateQueries({ queryKey: ["endpoints"] }),
  });
  return (
    <>
      <h1>Endpoints</h1>
      <ErrorBox error={del.error} title="Delete failed" />
      <PagedTable paged={paged} empty={<>No endpoints. Deploy a completed job from its <Link href="/jobs">job page</Link>.</>}
        head={["Endpoint", "Status", "Model", "Instance", "Cost so far", "Created", ""]}
        row={(e) => (
          <tr key={e.endpoint_name}>
            <td><Link href={`/endpoints/${e.endpoint_name}`} className="mono">{e.endpoint_name}</Link></td>
            <td><Chip status={e.status} />{e.failure_reason && <div className="field-error">{e.failure_reason}</div>}</td>
            <td>{e.job_name ? <Link href={`/jobs/${e.job_name}`}>{e.model_name}</Link> : e.model_name}</td>
            <td>{e.instance_type} · {money(e.estimated_cost_per_hour)}/h</td>
            <td>{money(e.accrued_cost, e.currency)}</td>
            <td>{when(e.created_at)}</td>
            <td><div className="row-actions">
              <Link href={`/endpoints/${e.endpoint_name}`}>Playground</Link>
              <button className="danger small" disabled={del.isPending || e.status === "Deleting"}
                onClick={() => confirm(`Delete ${e.endpoint_name}? Its cost stops accruing.`) && del.mutate(e.endpoint_name)}>
                Delete
              </button>
            </div></td>
          </tr>
        )} />
    </>
  );
}
