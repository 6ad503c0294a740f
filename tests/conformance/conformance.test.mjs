// The package's CLI finds no test files in 0.3.6, so the suite is registered from here and run
// with `npx vitest run`. tests/test_conformance.py starts the server and sets the URL.
import { runConformanceTests } from "@durable-streams/server-conformance-tests"

const baseUrl = process.env.OUTLAST_CONFORMANCE_URL
if (!baseUrl) throw new Error("OUTLAST_CONFORMANCE_URL is not set")

runConformanceTests({
  baseUrl,
  longPollTimeoutMs: Number(process.env.OUTLAST_CONFORMANCE_LONG_POLL_MS ?? 500),
})
