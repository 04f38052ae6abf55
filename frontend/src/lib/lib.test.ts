import { describe, expect, it } from "vitest";
import { HyperparametersSchema } from "../client/schemas.gen";
import { ApiError, errorText, fieldError, toApiError } from "./errors";
import { bytes, duration, modelNameFor, money, newestOf, num, tone } from "./format";
import { fields, initial, payload, PRESETS, validate } from "./hyper";
import { hasPoints, latest, series } from "./metrics";
import { SSEParser } from "./sse";

describe("errors", () => {
  it("reads the API's error body, field included", () => {
    const e = toApiError(422, { error: { code: "validation_error", message: "must be > 0", param: "hyperparameters.learning_rate" } });
    expect(e).toBeInstanceOf(ApiError);
    expect([e.status, e.code, e.param]).toEqual([422, "validation_error", "hyperparameters.learning_rate"]);
    expect(errorText(e)).toBe("hyperparameters.learning_rate: must be > 0");
    expect(fieldError(e, "learning_rate")).toBe("must be > 0");
    expect(fieldError(e, "hyperparameters")).toBe("must be > 0");
    expect(fieldError(e, "epochs")).toBeNull();
  });
  it("does not repeat a field the message already names", () => {
    const e = toApiError(422, { error: { code: "x", message: "name: too long", param: "name" } });
    expect(errorText(e)).toBe("name: too long");
    expect(fieldError(e, "name")).toBe("too long");
  });
  it("explains a network failure and a body that is not the API's", () => {
    expect(toApiError(0, null).message).toMatch(/Cannot reach the server/);
    expect(toApiError(502, "<html>Bad gateway</html>").message).toBe("<html>Bad gateway</html>");
    expect(toApiError(500, null).message).toBe("HTTP 500");
  });
});

describe("format", () => {
  it("says how many a cut-short list leaves out, and nothing for a whole one", () => {
    expect(newestOf(20, 1000, "jobs")).toBe("The 20 newest of 1,000 jobs.");
    expect(newestOf(3, 3, "endpoints")).toBeNull();
    expect(newestOf(0, 0, "evaluations")).toBeNull();
  });
  it("money shows fractions of a cent", () => {
    expect(money(0)).toBe("$0.00");
    expect(money(0.0027)).toBe("$0.0027");
    expect(money(12.5)).toBe("$12.50");
    expect(money(null)).toBe("—");
  });
  it("sizes, durations, numbers, tones", () => {
    expect(bytes(153)).toBe("153 B");
    expect(bytes(2048)).toBe("2.0 KB");
    expect(duration(32)).toBe("32s");
    expect(duration(3725)).toBe("1h 2m");
    expect(num(6.0321456)).toBe("6.032");
    expect(num(0.00025)).toBe("2.50e-4");
    expect(tone("Completed")).toBe("ok");
    expect(tone("InProgress")).toBe("run");
    expect(tone("Failed")).toBe("bad");
    expect(tone("Stopped")).toBe("idle");
  });
  it("model names follow the API's pattern and length", () => {
    const n = modelNameFor("llm-tune-alice-tiny-llama-20261207-045533");
    expect(n).toBe("alice-tiny-llama-20261207-045533");
    const long = modelNameFor(`llm-tune-${"a".repeat(40)}-b--c-${"d".repeat(30)}`);
    expect(long.length).toBeLessThanOrEqual(50);
    expect(long).toMatch(/^[a-zA-Z0-9](-?[a-zA-Z0-9])*$/);
  });
});

describe("metrics", () => {
  const pts = [
    { metric_name: "train_loss", step: 2, value: 6.2 }, { metric_name: "learning_rate", step: 2, value: 3e-3 },
    { metric_name: "train_loss", step: 4, value: 6.1 }, { metric_name: "eval_loss", step: 4, value: 6.15 },
    { metric_name: "train_loss", step: 4, value: 6.05 }, { metric_name: "train_loss", step: null, value: 1 },
  ];
  it("aligns series on steps with gaps and keeps a repeated step's latest value", () => {
    expect(series(pts, ["train_loss", "eval_loss"])).toEqual([[2, 4], [6.2, 6.05], [null, 6.15]]);
    expect(hasPoints(series(pts, ["eval_loss"]))).toBe(true);
    expect(hasPoints(series(pts, ["grad_norm"]))).toBe(false);
  });
  it("latest takes the value at the highest step", () => {
    expect(latest(pts)).toMatchObject({ train_loss: 6.05, eval_loss: 6.15, learning_rate: 3e-3 });
  });
});

describe("hyperparameters from the API schema", () => {
  const fs = fields(HyperparametersSchema);
  const by = Object.fromEntries(fs.map((f) => [f.name, f]));
  it("reads kinds, bounds, defaults and help", () => {
    expect(by.epochs).toMatchObject({ kind: "integer", min: 1, def: 3 });
    expect(by.learning_rate).toMatchObject({ kind: "number", exclusiveMin: 0 });
    expect(by.lr_scheduler_type.kind).toBe("enum");
    expect(by.lr_scheduler_type.options).toContain("cosine");
    expect(by.use_lora.kind).toBe("boolean");
    expect(by.lora_target_modules).toMatchObject({ kind: "list", nullable: true });
    expect(fs.every((f) => f.help.length > 0)).toBe(true);
  });
  it("validates per field", () => {
    const v = { ...initial(fs), epochs: "0", learning_rate: "abc", batch_size: "2.5", max_steps: "" };
    expect(validate(fs, v)).toEqual({ epochs: "must be ≥ 1, ≤ 100", learning_rate: "must be a number", batch_size: "must be a whole number" });
    expect(validate(fs, initial(fs))).toEqual({});
  });
  it("sends only what differs from the defaults, typed", () => {
    expect(payload(fs, initial(fs))).toEqual({});
    const quick = initial(fs, PRESETS.find((p) => p.id === "quick")!.values);
    expect(payload(fs, quick)).toEqual({ epochs: 2, learning_rate: 3e-3, logging_steps: 2, max_length: 64 });
    expect(payload(fs, { ...initial(fs), lora_target_modules: "q_proj, v_proj", use_lora: false }))
      .toEqual({ lora_target_modules: ["q_proj", "v_proj"], use_lora: false });
  });
  it("a nullable boolean is a three-way choice: unset, true, false", () => {
    const [f] = fields({ properties: { fp16: { anyOf: [{ type: "boolean" }, { type: "null" }], description: "half" } } });
    expect(f).toMatchObject({ kind: "enum", bool: true, options: ["true", "false"], def: null });
    expect(payload([f], initial([f]))).toEqual({});
    expect(payload([f], { fp16: "true" })).toEqual({ fp16: true });
    expect(payload([f], { fp16: "false" })).toEqual({ fp16: false });
  });
  it("presets name only real fields within bounds", () => {
    for (const p of PRESETS) {
      for (const k of Object.keys(p.values)) expect(by[k], `${p.id}.${k}`).toBeDefined();
      expect(validate(fs, initial(fs, p.values))).toEqual({});
    }
  });
});

describe("SSE", () => {
  it("joins deltas across chunk boundaries and sees [DONE]", () => {
    const p = new SSEParser();
    const ev = (c: string) => `data: ${JSON.stringify({ choices: [{ delta: { content: c } }] })}\n\n`;
    const stream = ev("Hel") + ev("lo") + "data: [DONE]\n\n";
    const a = p.push(stream.slice(0, 30));
    const b = p.push(stream.slice(30));
    expect(a.text + b.text).toBe("Hello");
    expect(b.done).toBe(true);
  });
  it("reports an error event", () => {
    expect(new SSEParser().push('data: {"error": {"message": "model gone"}}\n\n').error).toBe("model gone");
  });
});
