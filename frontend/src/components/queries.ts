import { queryOptions, useQuery } from "@tanstack/react-query";
import { data, sdk } from "../api";

export function useBaseModels() {
  return useQuery({
    queryKey: ["base-models"], staleTime: Infinity,
    queryFn: async () => (await data(sdk.baseModelsApiBaseModelsGet())).data,
  });
}

export function useInstanceTypes() {
  return useQuery({
    queryKey: ["instance-types"], staleTime: Infinity,
    queryFn: async () => {
      const r = await data(sdk.instanceTypesApiInstanceTypesGet());
      return { types: r.data, backend: r.backend };
    },
  });
}

// The job page's reads, defined once: the page uses them, and main.tsx starts them at load time
// for a job URL, beside the page's own code instead of after it.
const path = (name: string) => ({ path: { job_name: name } });
export const jobQueries = {
  job: (name: string) => queryOptions({ queryKey: ["job", name],
    queryFn: () => data(sdk.getJobApiTrainingJobJobNameGet(path(name))) }),
  metrics: (name: string) => queryOptions({ queryKey: ["job", name, "metrics"],
    queryFn: () => data(sdk.jobMetricsApiTrainingJobJobNameMetricsGet(path(name))) }),
  events: (name: string) => queryOptions({ queryKey: ["job", name, "events"],
    queryFn: () => data(sdk.jobEventsApiTrainingJobJobNameEventsGet(path(name))) }),
  actions: (name: string) => queryOptions({ queryKey: ["job", name, "actions"],
    queryFn: () => data(sdk.jobActionsApiTrainingJobActionsJobNameGet(path(name))) }),
};

export const JOBS_PAGE = 20;
export const JOB_STATUSES = ["InProgress", "Completed", "Failed", "Stopping", "Stopped"] as const;
export type JobStatus = (typeof JOB_STATUSES)[number];
export const jobsPage = (after?: string, status?: JobStatus) =>
  data(sdk.listJobsApiTrainingJobsGet({ query: { limit: JOBS_PAGE, after, status } }));
