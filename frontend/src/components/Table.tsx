import type { ReactNode } from "react";
import { Card, Loaded, Pager } from "./ui";
import type { Paged } from "./usePaged";

export function Table({ head, children }: { head: string[]; children: ReactNode }) {
  return (
    <div className="table-wrap">
      <table>
        <thead><tr>{head.map((h, i) => <th key={i}>{h}</th>)}</tr></thead>
        <tbody>{children}</tbody>
      </table>
    </div>
  );
}

/** A card with one page of an API list: loading, error and empty states, rows, and the pager. */
export function PagedTable<T>({ paged, head, empty, row, title }: {
  paged: Paged<T>; head: string[]; empty: ReactNode; row: (item: T) => ReactNode; title?: string;
}) {
  const { q, page, hasMore, next, prev } = paged;
  return (
    <Card title={title}>
      <Loaded q={q} empty={(d) => d.data.length === 0 && empty}>
        {(d) => <Table head={head}>{d.data.map(row)}</Table>}
      </Loaded>
      <Pager page={page} hasMore={hasMore} onPrev={prev} onNext={next} />
    </Card>
  );
}
