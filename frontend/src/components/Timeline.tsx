import type { EventRead } from "../api";
import { when } from "../lib/format";
import { Card, Loaded } from "./ui";

/** Events of a job or an endpoint (status changes, epochs, checkpoints, errors), newest first. */
export function Timeline({ q }: { q: { isPending: boolean; error: unknown; data?: EventRead[] } }) {
  return (
    <Card title="Events">
      <Loaded q={q} empty={(d) => d.length === 0 && "No events yet."}>
        {(d) => <ol className="timeline">{[...d].reverse().map((e, i) => (
          <li key={i} className={`ev-${e.level}`}><time className="muted">{when(e.timestamp)}</time> <span className="mono muted">{e.type}</span> {e.message}</li>
        ))}</ol>}
      </Loaded>
    </Card>
  );
}
