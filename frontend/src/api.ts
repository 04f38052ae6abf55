// The generated client, set up once: the bearer token on every call, the API's error body turned
// into an ApiError, and a 401 on a signed-in session sends the user back to sign in.
import { client } from "./client/client.gen";
import { EXPIRED, signOut, token } from "./lib/auth";
import { ApiError, toApiError } from "./lib/errors";

client.setConfig({ baseUrl: "", auth: () => token() });

client.interceptors.error.use((error, response) => {
  const status = response?.status ?? 0;
  if (status === 401 && token()) signOut(EXPIRED);
  return toApiError(status, error);
});

/** Await a generated call and return its data, throwing the ApiError on failure. */
export async function data<T>(call: Promise<{ data?: T; error?: unknown }>): Promise<T> {
  let r: { data?: T; error?: unknown };
  try {
    r = await call;
  } catch (e) {
    throw e instanceof ApiError ? e : toApiError(0, null);
  }
  if (r.error !== undefined) throw r.error instanceof ApiError ? r.error : toApiError(0, r.error);
  return r.data as T;
}

export * as sdk from "./client/sdk.gen";
export type * from "./client/types.gen";
