// The API answers every failure with {"error": {code, message, param, details}}; the pages show
// `message` and point at `param` (the form field), whatever the status.

export class ApiError extends Error {
  constructor(
    message: string,
    readonly status: number,
    readonly code: string,
    readonly param: string | null = null,
    readonly details: unknown = null,
  ) {
    super(message);
    this.name = "ApiError";
  }
}

type Body = { error?: { code?: string; message?: string; param?: string | null; details?: unknown } };

export function toApiError(status: number, body: unknown): ApiError {
  const err = (body && typeof body === "object" ? (body as Body).error : undefined) ?? undefined;
  if (err && typeof err.message === "string") {
    return new ApiError(err.message, status, err.code ?? "error", err.param ?? null, err.details ?? null);
  }
  if (status === 0) return new ApiError("Cannot reach the server; is it running?", 0, "network_error");
  const text = typeof body === "string" && body.trim() ? body.trim().slice(0, 200) : `HTTP ${status}`;
  return new ApiError(text, status, "http_error");
}

/** A readable line for any thrown value, with the field named when the API named one. */
export function errorText(e: unknown): string {
  if (e instanceof ApiError) return e.param && !e.message.startsWith(e.param) ? `${e.param}: ${e.message}` : e.message;
  if (e instanceof Error) return e.message;
  return String(e);
}

/** The error for one form field: the API's `param` may name it directly or a path inside it. */
export function fieldError(e: unknown, field: string): string | null {
  if (!(e instanceof ApiError) || !e.param) return null;
  const p = e.param;
  const mine = p === field || p.endsWith(`.${field}`) || p.startsWith(`${field}.`) || p.startsWith(`${field}[`);
  // Beside the field its name is redundant: "name: String should match..." reads "String should match...".
  return mine ? (e.message.startsWith(`${p}: `) ? e.message.slice(p.length + 2) : e.message) : null;
}
