// Starts the protocol's reference server (@durable-streams/server, from bench/node_modules)
// on 127.0.0.1:$PORT. In memory unless $DATA_DIR is set (then its LMDB + log-file store).
// Prints one "ready <url>" line once it listens; SIGTERM/SIGINT stop it.
import { DurableStreamTestServer } from "@durable-streams/server"

const port = Number(process.env.PORT)
if (!Number.isInteger(port) || port <= 0) {
  console.error("PORT must be set to a TCP port")
  process.exit(2)
}
const options = { port, host: "127.0.0.1" }
if (process.env.DATA_DIR) options.dataDir = process.env.DATA_DIR
const server = new DurableStreamTestServer(options)
await server.start()
console.log(`ready ${server.url ?? `http://127.0.0.1:${port}`}`)

let stopping = false
async function stop() {
  if (stopping) process.exit(1) // a second signal stops at once
  stopping = true
  const timer = setTimeout(() => process.exit(0), 3000)
  timer.unref()
  try {
    await server.stop()
  } finally {
    process.exit(0)
  }
}
process.on("SIGTERM", stop)
process.on("SIGINT", stop)
