import { defineConfig } from "@hey-api/openapi-ts";

// The typed client is generated from the app's own schema (scripts/dump_openapi.py) at every build.
export default defineConfig({
  input: "openapi.json",
  output: { path: "src/client" },
  plugins: ["@hey-api/client-fetch", "@hey-api/typescript", "@hey-api/sdk", "@hey-api/schemas"],
});
