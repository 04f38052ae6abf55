// Server-sent events of OpenAI's streaming chat completions: `data: {json}` lines, blank-line
// separated, ending with `data: [DONE]`. Chunks may split anywhere, so a buffer carries the rest.

export type Delta = { text: string; done: boolean; error?: string };

export class SSEParser {
  private buf = "";

  push(chunk: string): Delta {
    this.buf += chunk;
    let text = "";
    let done = false;
    let error: string | undefined;
    let cut: number;
    while ((cut = this.buf.search(/\r?\n\r?\n/)) >= 0) {
      const event = this.buf.slice(0, cut);
      this.buf = this.buf.slice(cut).replace(/^\r?\n\r?\n/, "");
      const payload = event.split(/\r?\n/).filter((l) => l.startsWith("data:")).map((l) => l.slice(5).trimStart()).join("\n");
      if (!payload) continue;
      if (payload === "[DONE]") {
        done = true;
        continue;
      }
      try {
        const obj = JSON.parse(payload) as { choices?: { delta?: { content?: string }; text?: string }[];
          error?: { message?: string } };
        if (obj.error) error = obj.error.message ?? "stream error";
        for (const c of obj.choices ?? []) text += c.delta?.content ?? c.text ?? "";
      } catch {
        error = `unreadable event: ${payload.slice(0, 80)}`;
      }
    }
    return { text, done, error };
  }
}
