// Follows one job's events with the npm `eventsource` package (v4), as a Node app would, and
// reports everything it sees as JSON lines on stdout:
//   {"type": "request", "lastEventId": ...}   each connection attempt, with its Last-Event-ID
//   {"type": "open"} | {"type": "event", "event", "data", "id"} | {"type": "error", "code"}
//   {"type": "closed"}                          the EventSource stopped for good (then exit 0)
// Usage: node follow_events.mjs EVENTS_URL
import {EventSource} from 'eventsource'

const url = process.argv[2]
const TYPES = ['message', 'outlast.state', 'outlast.output', 'outlast.result', 'outlast.error']
const GUARD_MS = 120_000

function report(record) {
  process.stdout.write(JSON.stringify(record) + '\n')
}

const es = new EventSource(url, {
  fetch: (input, init) => {
    report({type: 'request', lastEventId: new Headers(init?.headers).get('last-event-id')})
    return fetch(input, init)
  },
})
es.onopen = () => report({type: 'open'})
for (const type of TYPES) {
  es.addEventListener(type, (event) => {
    report({type: 'event', event: event.type, data: event.data, id: event.lastEventId})
  })
}
es.onerror = (event) => {
  report({type: 'error', code: event.code ?? null, message: event.message ?? null})
  if (es.readyState === es.CLOSED) {
    report({type: 'closed'})
    process.exit(0)
  }
}
setTimeout(() => {
  report({type: 'guard', message: `still open after ${GUARD_MS} ms`})
  process.exit(2)
}, GUARD_MS)
