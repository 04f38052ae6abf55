import type { ReactNode } from "react";
import { Link, useLocation } from "wouter";
import { session, signOut } from "../lib/auth";

const NAV = [["/datasets", "Datasets"], ["/jobs", "Jobs"], ["/endpoints", "Endpoints"],
  ["/evaluations", "Evaluations"], ["/models", "Models"], ["/usage", "Usage"]] as const;

export function Layout({ children }: { children: ReactNode }) {
  const [path] = useLocation();
  return (
    <>
      <a className="skip" href="#main">Skip to content</a>
      <header className="top">
        <Link href="/jobs" className="brand">LLM Tuner</Link>
        <nav aria-label="Main">
          {NAV.map(([href, label]) => (
            <Link key={href} href={href} aria-current={path.startsWith(href) ? "page" : undefined}>{label}</Link>
          ))}
        </nav>
        <div className="who">
          <span className="muted">{session()?.username}</span>
          <button className="link" onClick={() => signOut()}>Sign out</button>
        </div>
      </header>
      <main id="main" tabIndex={-1}>{children}</main>
    </>
  );
}
