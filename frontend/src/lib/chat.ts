import { data, sdk } from "../api";
import { EXPIRED, signOut, token } from "./auth";
import { ApiError, toApiError } from "./errors";
import { SSEParser } from "./sse";

export type Turn = { role: "user" | "assistant"; content: string };
export type Params = { max_new_tokens: number; temperature: number; top_p: number; top_k: number;
  repetition_penalty: number; seed?: number };

let streamingMissing = false; // set once /v1/chat/completions answers "no such route"

/** Streams the reply through OpenAI-compatible /v1/chat/completions where the API offers it,
 * else asks /api/invoke-model for the whole reply with the last user turn. */
export async function reply(endpoint: string, model: string, history: Turn[], p: Params,
  onText: (soFar: string) => void, signal?: AbortSignal): Promise<{ text: string; streamed: boolean }> {
  if (!streamingMissing) {
    const res = await fetch("/v1/chat/completions", {
      method: "POST", signal,
      headers: { "Content-Type": "application/json", Authorization: `Bearer ${token() ?? ""}` },
      body: JSON.stringify({ model, messages: history, stream: true, max_tokens: p.max_new_tokens,
        temperature: p.temperature, top_p: p.top_p, seed: p.seed }),
    });
    if (res.status === 404 && !(await isModelError(res))) streamingMissing = true;
    else if (!res.ok || !res.body) {
      if (res.status === 401) signOut(EXPIRED);
      throw toApiError(res.status, await res.json().catch(() => null));
    } else return { text: await readStream(res.body, onText), streamed: true };
  }
  const last = [...history].reverse().find((t) => t.role === "user")?.content ?? "";
  const r = await data(sdk.invokeModelApiInvokeModelPost({ body: { endpoint_name: endpoint, input_text: last,
    parameters: { ...p, do_sample: p.temperature > 0 } } }));
  onText(r.result.generated_text);
  return { text: r.result.generated_text, streamed: false };
}

async function isModelError(res: Response): Promise<boolean> {
  // A 404 naming the model (OpenAI's body) means the route exists; ours says "No such route".
  const body = (await res.clone().json().catch(() => null)) as { error?: { message?: string } } | null;
  return Boolean(body?.error?.message && body.error.message !== "No such route");
}

async function readStream(body: ReadableStream<Uint8Array>, onText: (s: string) => void): Promise<string> {
  const reader = body.getReader();
  const decoder = new TextDecoder();
  const parser = new SSEParser();
  let text = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) break;
    const d = parser.push(decoder.decode(value, { stream: true }));
    if (d.error) throw new ApiError(d.error, 200, "stream_error");
    if (d.text) onText((text += d.text));
    if (d.done) break;
  }
  return text;
}
