import { useMutation, useQueryClient } from "@tanstack/react-query";
import { Link } from "wouter";
import { data, sdk } from "../api";
import { PagedTable } from "../components/Table";
import { ErrorBox } from "../components/ui";
import { usePaged } from "../components/usePaged";
import { when } from "../lib/format";

export default function Models() {
  const qc = useQueryClient();
  const paged = usePaged(["models"], (after) => data(sdk.listModelsApiModelsGet({ query: { limit: 20, after } })));
  const del = useMutation({
    mutationFn: (id: string) => data(sdk.deleteModelApiModelsModelIdDelete({ path: { model_id: id } })),
    onSuccess: () => qc.invalidateQueries({ queryKey: ["models"] }),
  });
  return (
    <>
      <h1>Model registry</h1>
      <ErrorBox error={del.error} />
      <PagedTable paged={paged} empty={<>No registered models. Use “Register…” on a completed <Link href="/jobs">job</Link>.</>}
        head={["Model", "Version", "Base", "Job", "Tags", "Registered", ""]}
        row={(m) => (
          <tr key={m.model_id}>
            <td><strong>{m.model_name}</strong>{m.description && <div className="muted">{m.description}</div>}</td>
            <td>v{m.version}</td>
            <td>{m.base_model}</td>
            <td><Link href={`/jobs/${m.job_name}`} className="mono">{m.job_name}</Link></td>
            <td>{m.tags.map((t) => <span key={t} className="chip chip-idle">{t}</span>)}</td>
            <td>{when(m.created_at)}</td>
            <td><button className="danger small" disabled={del.isPending}
              onClick={() => confirm(`Unregister ${m.model_name} v${m.version}? The job and its weights stay.`) && del.mutate(m.model_id)}>Unregister</button></td>
          </tr>
        )} />
    </>
  );
}
