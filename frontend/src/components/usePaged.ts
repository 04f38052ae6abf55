import { keepPreviousData, useQuery } from "@tanstack/react-query";
import { useState } from "react";

type Page<T> = { data: T[]; has_more: boolean; next_cursor?: string | null };

/** One page of a cursor-paginated list, with the cursors behind it kept for "Newer". */
export function usePaged<T>(key: unknown[], fetchPage: (after?: string) => Promise<Page<T>>,
  refetchInterval?: (rows: T[]) => number | false) {
  const [cursors, setCursors] = useState<(string | undefined)[]>([undefined]);
  const page = cursors.length - 1;
  const q = useQuery({
    queryKey: [...key, cursors[page]],
    queryFn: () => fetchPage(cursors[page]),
    placeholderData: keepPreviousData,
    refetchInterval: refetchInterval ? (query) => refetchInterval(query.state.data?.data ?? []) : undefined,
  });
  return {
    q, page, hasMore: Boolean(q.data?.has_more && q.data.next_cursor),
    next: () => q.data?.next_cursor && setCursors([...cursors, q.data.next_cursor]),
    prev: () => setCursors(cursors.slice(0, -1)),
  };
}

export type Paged<T> = ReturnType<typeof usePaged<T>>;
