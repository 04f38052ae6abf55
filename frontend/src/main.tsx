import "./styles.css";
import "./api";
import { QueryClient, QueryClientProvider } from "@tanstack/react-query";
import { lazy, StrictMode, Suspense, useEffect, useState } from "react";
import { createRoot } from "react-dom/client";
import { Redirect, Route, Switch } from "wouter";
import { Layout } from "./components/Layout";
import { jobQueries, jobsPage } from "./components/queries";
import { Spinner } from "./components/ui";
import { ApiError } from "./lib/errors";
import { onSessionChange, session } from "./lib/auth";
import { SignIn } from "./pages/SignIn";

// Every page but sign-in is its own chunk: the first load carries React, the query cache and the
// router only.
const pages = {
  job: () => import("./pages/Job"),
  jobs: () => import("./pages/Jobs"),
};
const Datasets = lazy(() => import("./pages/Datasets"));
const Dataset = lazy(() => import("./pages/Dataset"));
const NewJob = lazy(() => import("./pages/NewJob"));
const Jobs = lazy(pages.jobs);
const Job = lazy(pages.job);
const Endpoints = lazy(() => import("./pages/Endpoints"));
const Playground = lazy(() => import("./pages/Playground"));
const Evaluations = lazy(() => import("./pages/Evaluations"));
const Evaluation = lazy(() => import("./pages/Evaluation"));
const Models = lazy(() => import("./pages/Models"));
const Usage = lazy(() => import("./pages/Usage"));

const queries = new QueryClient({
  defaultOptions: {
    queries: {
      staleTime: 5_000,
      // 4xx answers are final (404, 401, validation): retrying only delays the message.
      retry: (n, e) => !(e instanceof ApiError && e.status >= 400 && e.status < 500) && n < 2,
    },
  },
});

/** On a direct load of the jobs list or a job page, fetch its code and its data at once, side by side. */
function preload(path: string) {
  if (!session()) return;
  const job = /^\/jobs\/([^/]+)$/.exec(path);
  if (job && job[1] !== "new") {
    void pages.job();
    const name = decodeURIComponent(job[1]);
    void queries.prefetchQuery(jobQueries.job(name));
    void queries.prefetchQuery(jobQueries.metrics(name));
    void queries.prefetchQuery(jobQueries.events(name));
    void queries.prefetchQuery(jobQueries.actions(name));
  } else if (path === "/jobs" || path === "/") {
    void pages.jobs();
    void queries.prefetchQuery({ queryKey: ["jobs", undefined], queryFn: () => jobsPage() }); // usePaged's key
  }
}
preload(location.pathname);

function App() {
  const [signedIn, setSignedIn] = useState(session() !== null);
  const [notice, setNotice] = useState<string | undefined>();
  useEffect(() => onSessionChange((s, reason) => {
    setSignedIn(s !== null);
    setNotice(reason);
    if (!s) queries.clear();
  }), []);
  if (!signedIn) return <SignIn notice={notice} />;
  return (
    <Layout>
      <Suspense fallback={<Spinner />}>
        <Switch>
          <Route path="/datasets" component={Datasets} />
          <Route path="/datasets/:id">{(p) => <Dataset id={p.id} />}</Route>
          <Route path="/jobs" component={Jobs} />
          <Route path="/jobs/new" component={NewJob} />
          <Route path="/jobs/:name">{(p) => <Job name={p.name} />}</Route>
          <Route path="/endpoints" component={Endpoints} />
          <Route path="/endpoints/:name">{(p) => <Playground name={p.name} />}</Route>
          <Route path="/evaluations" component={Evaluations} />
          <Route path="/evaluations/:id">{(p) => <Evaluation id={p.id} />}</Route>
          <Route path="/models" component={Models} />
          <Route path="/usage" component={Usage} />
          <Route><Redirect to="/jobs" /></Route>
        </Switch>
      </Suspense>
    </Layout>
  );
}

createRoot(document.getElementById("root")!).render(
  <StrictMode>
    <QueryClientProvider client={queries}><App /></QueryClientProvider>
  </StrictMode>,
);
