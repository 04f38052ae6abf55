import { Link } from "wouter";
import { useState } from "react";
import { JOB_STATUSES, type JobStatus, jobsPage } from "../components/queries";
import { PagedTable } from "../components/Table";
import { Chip, Progress } from "../components/ui";
import { usePaged } from "../components/usePaged";
import { money, when } from "../lib/format";

const RUNNING = ["InProgress", "Stopping"];

function JobsTable({ status }: { status?: JobStatus }) {
  const paged = usePaged(status ? ["jobs", status] : ["jobs"], (after) => jobsPage(after, status),
    (rows) => (rows.some((j) => RUNNING.includes(j.status)) ? 3000 : false));
  return (
    <PagedTable paged={paged} empty={status ? `No ${status} jobs.` : <>No jobs yet. <Link href="/datasets">Upload a dataset</Link>, then start one.</>}
      head={["Job", "Status", "Progress", "Base model", "Cost", "Created"]}
      row={(j) => {
        const pct = Number(j.progress?.percent ?? (j.status === "Completed" ? 100 : 0));
        return (
          <tr key={j.job_name}>
            <td><Link href={`/jobs/${j.job_name}`} className="mono">{j.job_name}</Link></td>
            <td><Chip status={j.status} />{RUNNING.includes(j.status) && <span className="muted"> {j.secondary_status}</span>}</td>
            <td className="progress-cell"><Progress value={pct} label={`${j.job_name} progress`} /><span className="muted">{pct.toFixed(0)}%</span></td>
            <td>{j.base_model}</td>
            <td>{money(j.actual_cost ?? j.estimated_cost)}</td>
            <td>{when(j.created_at)}</td>
          </tr>
        );
      }} />
  );
}

export default function Jobs() {
  const [status, setStatus] = useState<JobStatus | "">("");
  return (
    <>
      <div className="title-row">
        <h1>Fine-tuning jobs</h1>
        <div className="row-actions">
          <label htmlFor="job-status" className="sr-only">Status</label>
          <select id="job-status" value={status} onChange={(e) => setStatus(e.target.value as JobStatus | "")}>
            <option value="">All statuses</option>
            {JOB_STATUSES.map((s) => <option key={s}>{s}</option>)}
          </select>
          <Link className="button primary" href="/jobs/new">New fine-tune</Link>
        </div>
      </div>
      {/* keyed: a new filter starts again from its first page */}
      <JobsTable key={status} status={status || undefined} />
    </>
  );
}
