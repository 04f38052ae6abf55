import "uplot/dist/uPlot.min.css";
import { useEffect, useRef } from "react";
import uPlot from "uplot";
import type { Aligned } from "../lib/metrics";

const COLORS = ["#2563eb", "#dc2626", "#059669", "#9333ea"];

/** A uPlot line chart that follows its container's width and takes new points in place. */
export function Chart({ title, data, names, log = false, time = false }: {
  title: string; data: Aligned; names: string[]; log?: boolean; time?: boolean;
}) {
  const box = useRef<HTMLDivElement>(null);
  const plot = useRef<uPlot | null>(null);

  useEffect(() => {
    const el = box.current!;
    const opts: uPlot.Options = {
      width: Math.max(200, el.clientWidth), height: 220,
      scales: { x: { time }, y: log ? { distr: 3 } : {} },
      axes: [time ? {} : { label: "step" }, { size: 60 }],
      series: [{ label: time ? "day" : "step" }, ...names.map((n, i) => ({ label: n, stroke: COLORS[i % COLORS.length], width: 2,
        // Dots on a short series only; a long one reads better as a line.
        spanGaps: true, points: { show: (u: uPlot) => u.data[0].length < 40 } }))],
      legend: { live: false }, // the latest values are shown above the charts
    };
    plot.current = new uPlot(opts, data as uPlot.AlignedData, el);
    const ro = new ResizeObserver(() => plot.current?.setSize({ width: Math.max(200, el.clientWidth), height: 220 }));
    ro.observe(el);
    return () => {
      ro.disconnect();
      plot.current?.destroy();
      plot.current = null;
    };
    // The chart is rebuilt only when its series change; new points go through setData below.
    // eslint-disable-next-line react-hooks/exhaustive-deps
  }, [names.join(","), log, time]);

  useEffect(() => {
    plot.current?.setData(data as uPlot.AlignedData);
  }, [data]);

  return <figure className="chart" aria-label={title}><figcaption>{title}</figcaption><div ref={box} data-points={data[0].length} /></figure>;
}
