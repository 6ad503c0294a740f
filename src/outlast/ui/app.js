// outlast's dashboard: plain JavaScript on the JSON API, no build step, no external resources.
// Views: "#/" (queues and jobs) and "#/jobs/<id>" (one job, its output followed live).
'use strict'

const TOKEN_KEY = 'outlast-token'
const REFRESH_MS = 2000
const HISTORY_MS = 5 * 60 * 1000 // the throughput chart's window
const PAGE_SIZE = 25

const $ = (selector) => document.querySelector(selector)

const state = {
  token: sessionStorage.getItem(TOKEN_KEY),
  page: { cursor: null, next: null, filters: {} },
  finished: new Map(), // queue name -> [[time ms, jobs finished so far], ...]
  timer: null,
  follow: null, // the job page's output follower: {stop()}
}

class ApiError extends Error {
  constructor (status, code, message) {
    super(message)
    this.status = status
    this.code = code
  }
}

async function api (method, path, body) {
  const headers = { Accept: 'application/json' }
  if (state.token) headers.Authorization = `Bearer ${state.token}`
  const init = { method, headers, cache: 'no-store' }
  if (body !== undefined) {
    headers['Content-Type'] = 'application/json'
    init.body = JSON.stringify(body)
  }
  const resp = await fetch(path, init)
  let data = null
  try { data = await resp.json() } catch (_) { data = null }
  if (!resp.ok) {
    const error = (data && data.error) || {}
    throw new ApiError(resp.status, error.code || `http_${resp.status}`, error.message || resp.statusText)
  }
  return data
}

// -- messages -------------------------------------------------------------------------------

function notice (text, kind = 'error') {
  const box = $('#notice')
  box.textContent = text
  box.className = kind === 'info' ? 'info' : ''
  box.hidden = !text
}

function explain (err, action) {
  if (err.status === 401) {
    showLogin(state.token ? `The token was refused: ${err.message}` : '')
  } else if (err.status === 403) {
    notice(`Not allowed to ${action}: your token does not have the scope this needs (${err.message}).`)
  } else {
    notice(`Could not ${action}: ${err.message}`)
  }
}

// -- the token ------------------------------------------------------------------------------

function showLogin (message) {
  stopTimers()
  for (const id of ['#home', '#job']) $(id).hidden = true
  $('#login').hidden = false
  notice(message || '', 'info')
  $('#token').focus()
}

$('#login').addEventListener('submit', (event) => {
  event.preventDefault()
  state.token = $('#token').value.trim()
  sessionStorage.setItem(TOKEN_KEY, state.token)
  $('#token').value = ''
  $('#login').hidden = true
  notice('')
  route()
})

$('#signout').addEventListener('click', () => {
  sessionStorage.removeItem(TOKEN_KEY)
  state.token = null
  route()
})

// -- small DOM helpers ----------------------------------------------------------------------

function el (tag, attrs = {}, ...children) {
  const node = document.createElement(tag)
  for (const [key, value] of Object.entries(attrs)) {
    if (key === 'class') node.className = value
    else if (key.startsWith('on')) node.addEventListener(key.slice(2), value)
    else node.setAttribute(key, value)
  }
  for (const child of children) node.append(child instanceof Node ? child : String(child ?? ''))
  return node
}

function badge (text) {
  return el('span', { class: `state ${text}` }, text)
}

function when (iso) {
  return iso ? new Date(iso).toLocaleString() : ''
}

function pretty (value) {
  return value === null || value === undefined ? '' : JSON.stringify(value, null, 2)
}

// -- queues ---------------------------------------------------------------------------------

function throughput (name, finished, now) {
  const points = state.finished.get(name) || []
  points.push([now, finished])
  while (points.length > 2 && now - points[0][0] > HISTORY_MS) points.shift()
  state.finished.set(name, points)
  const rates = []
  for (let i = 1; i < points.length; i++) {
    const seconds = (points[i][0] - points[i - 1][0]) / 1000
    // Retention removes old jobs, so a count may fall: that is not negative work.
    rates.push(seconds > 0 ? Math.max(0, (points[i][1] - points[i - 1][1]) / seconds) : 0)
  }
  return rates
}

function sparkline (rates) {
  const ns = 'http://www.w3.org/2000/svg'
  const width = 160
  const height = 28
  const svg = document.createElementNS(ns, 'svg')
  svg.setAttribute('class', 'spark')
  svg.setAttribute('width', width)
  svg.setAttribute('height', height)
  const base = document.createElementNS(ns, 'line')
  for (const [k, v] of Object.entries({ x1: 0, y1: height - 1, x2: width, y2: height - 1 })) base.setAttribute(k, v)
  svg.append(base)
  if (rates.length > 1) {
    const top = Math.max(...rates, 1e-9)
    const step = width / (HISTORY_MS / REFRESH_MS)
    const start = width - step * (rates.length - 1)
    const line = document.createElementNS(ns, 'polyline')
    line.setAttribute('points', rates.map((r, i) => `${(start + i * step).toFixed(1)},${(height - 2 - (r / top) * (height - 4)).toFixed(1)}`).join(' '))
    svg.append(line)
  }
  return svg
}

async function setPaused (name, paused) {
  try {
    await api('POST', `/v1/queues/${encodeURIComponent(name)}/${paused ? 'pause' : 'resume'}`)
    notice(`Queue ${name} ${paused ? 'paused' : 'resumed'}.`, 'info')
    await loadQueues()
  } catch (err) {
    explain(err, `${paused ? 'pause' : 'resume'} queue ${name}`)
  }
}

async function loadQueues () {
  const data = await api('GET', '/v1/queues')
  const now = Date.now()
  const body = $('#queues tbody')
  body.replaceChildren()
  const select = $('#filters select[name=queue]')
  const chosen = select.value
  select.replaceChildren(el('option', { value: '' }, 'any'))
  for (const q of data.queues) {
    const finished = (q.succeeded || 0) + (q.failed || 0) + (q.cancelled || 0)
    const rates = throughput(q.name, finished, now)
    const last = rates.length ? rates[rates.length - 1] : 0
    const button = el('button', { type: 'button', onclick: () => setPaused(q.name, !q.paused) }, q.paused ? 'Resume' : 'Pause')
    button.dataset.queue = q.name
    body.append(el('tr', { 'data-queue': q.name },
      el('td', {}, q.name),
      el('td', { class: 'num' }, q.running),
      el('td', { class: 'num' }, q.queued),
      el('td', { class: 'num' }, q.capacity),
      el('td', { class: 'num' }, q.concurrency),
      el('td', {}, badge(q.paused ? 'paused' : 'active')),
      el('td', { title: `${last.toFixed(1)} jobs/s now` }, sparkline(rates)),
      el('td', {}, button)))
    select.append(el('option', {}, q.name))
  }
  select.value = chosen
}

// -- jobs -----------------------------------------------------------------------------------

async function loadJobs () {
  const params = new URLSearchParams({ limit: PAGE_SIZE })
  for (const [key, value] of Object.entries(state.page.filters)) if (value) params.set(key, value)
  if (state.page.cursor) params.set('cursor', state.page.cursor)
  const data = await api('GET', `/v1/jobs?${params}`)
  state.page.next = data.next
  $('#older').disabled = !data.next
  $('#newest').hidden = !state.page.cursor
  const body = $('#jobs tbody')
  body.replaceChildren()
  for (const job of data.jobs) {
    body.append(el('tr', { 'data-job': job.id },
      el('td', {}, el('a', { href: `#/jobs/${job.id}` }, job.id)),
      el('td', {}, job.task),
      el('td', {}, job.queue),
      el('td', {}, badge(job.state)),
      el('td', { class: 'num' }, `${job.attempt}/${job.max_attempts}`),
      el('td', {}, when(job.created_at))))
  }
  if (!data.jobs.length) body.append(el('tr', {}, el('td', { colspan: 6, class: 'muted' }, 'No jobs.')))
}

$('#filters').addEventListener('submit', (event) => {
  event.preventDefault()
  const form = new FormData(event.target)
  state.page = { cursor: null, next: null, filters: Object.fromEntries(form.entries()) }
  refreshHome()
})
$('#older').addEventListener('click', () => { state.page.cursor = state.page.next; refreshHome() })
$('#newest').addEventListener('click', () => { state.page.cursor = null; refreshHome() })

async function refreshHome () {
  try {
    await Promise.all([loadQueues(), loadJobs()])
  } catch (err) {
    explain(err, 'read queues and jobs')
  }
}

// -- one job --------------------------------------------------------------------------------

// Follows the job's durable stream (JSON messages) from an offset: catch-up reads, then
// long-polls; after a dropped connection it goes on from the last offset it got.
function followStream (url, onMessages) {
  let stopped = false
  let controller = null
  async function run () {
    let offset = '-1'
    let live = false
    let backoff = 500
    while (!stopped) {
      const u = new URL(url, location.href)
      u.searchParams.set('offset', offset)
      if (live) u.searchParams.set('live', 'long-poll')
      controller = new AbortController()
      try {
        // A signed link (tokens on) reads this one job's stream by itself; a token is sent only
        // without one (a token whose scopes are narrower would be refused where the link is not).
        const headers = state.token && !u.searchParams.has('sig') ? { Authorization: `Bearer ${state.token}` } : {}
        const resp = await fetch(u, { headers, signal: controller.signal, cache: 'no-store' })
        if (resp.status !== 200 && resp.status !== 204) {
          const data = await resp.json().catch(() => ({}))
          throw new ApiError(resp.status, data.error?.code, data.error?.message || resp.statusText)
        }
        offset = resp.headers.get('Stream-Next-Offset') || offset
        if (resp.status === 200) onMessages(await resp.json())
        backoff = 500
        $('#live').textContent = 'live'
        if (resp.headers.get('Stream-Closed') === 'true' && resp.headers.get('Stream-Up-To-Date') === 'true') {
          $('#live').textContent = 'ended'
          return
        }
        live = resp.headers.get('Stream-Up-To-Date') === 'true'
      } catch (err) {
        if (stopped) return
        if (err instanceof ApiError && err.status >= 400 && err.status < 500) {
          explain(err, 'read this job\'s output')
          return
        }
        $('#live').textContent = 'reconnecting…'
        await new Promise((resolve) => setTimeout(resolve, backoff))
        backoff = Math.min(backoff * 2, 10000)
      }
    }
  }
  run()
  return { stop () { stopped = true; if (controller) controller.abort() } }
}

// Text of one upstream event: an OpenAI-style chunk's content, or the event's data.
function eventText (message) {
  if (message.data === '[DONE]') return ''
  try {
    const chunk = JSON.parse(message.data)
    const choice = chunk && chunk.choices && chunk.choices[0]
    if (choice && choice.delta) return choice.delta.content || ''
    if (chunk && Array.isArray(chunk.choices) && chunk.usage) return ''
  } catch (_) { /* not JSON: shown as it is */ }
  return `${message.data}\n`
}

function renderJob (job) {
  $('#job-id').textContent = job.id
  const badgeNode = $('#job-state')
  badgeNode.textContent = job.state
  badgeNode.className = `state ${job.state}`
  const terminal = ['succeeded', 'failed', 'cancelled'].includes(job.state)
  $('#cancel').disabled = terminal
  $('#retry').disabled = !['failed', 'cancelled'].includes(job.state)
  const fields = $('#job-fields')
  fields.replaceChildren()
  const rows = [
    ['Task', job.task], ['Queue', job.queue], ['Attempt', `${job.attempt} of ${job.max_attempts}`],
    ['Created', when(job.created_at)], ['Started', when(job.started_at)], ['Finished', when(job.finished_at)],
  ]
  if (job.retry_of) rows.push(['Retry of', el('a', { href: `#/jobs/${job.retry_of}` }, job.retry_of)])
  if (job.waiting) rows.push(['Waiting', `${job.waiting.reason} until ${when(job.waiting.until)}`])
  for (const [name, value] of rows) fields.append(el('dt', {}, name), el('dd', {}, value))
  $('#input').textContent = pretty(job.input)
  $('#outcome').textContent = job.error ? pretty(job.error) : pretty(job.result)
}

async function showJob (id) {
  let job
  try {
    job = await api('GET', `/v1/jobs/${encodeURIComponent(id)}`)
  } catch (err) {
    explain(err, `read job ${id}`)
    return
  }
  $('#job').hidden = false
  renderJob(job)
  $('#output').textContent = ''
  $('#history').replaceChildren()
  const streamUrl = job.stream.startsWith('/v1/') ? job.stream : `/v1/stream/jobs/${job.id}`
  state.follow = followStream(streamUrl, (messages) => {
    let text = ''
    for (const m of messages) {
      if (m.type === 'event') text += eventText(m)
      else if (m.type === 'output') text += `${typeof m.data === 'string' ? m.data : JSON.stringify(m.data)}\n`
      else if (m.type === 'state') {
        const extra = m.reason ? ` (${m.reason})` : ''
        $('#history').append(el('li', {}, badge(m.state), ` attempt ${m.attempt}${extra}`))
      } else if (m.type === 'error') {
        $('#history').append(el('li', {}, badge('failed'), ` ${m.error?.code || ''}: ${m.error?.message || ''}`))
      }
    }
    if (text) $('#output').append(text)
    if (messages.some((m) => m.type === 'state')) {
      api('GET', `/v1/jobs/${encodeURIComponent(id)}`).then(renderJob).catch(() => {})
    }
  })
}

$('#cancel').addEventListener('click', async () => {
  const id = $('#job-id').textContent
  try {
    renderJob(await api('POST', `/v1/jobs/${encodeURIComponent(id)}/cancel`))
    notice('Cancel requested.', 'info')
  } catch (err) {
    explain(err, 'cancel this job')
  }
})

$('#retry').addEventListener('click', async () => {
  const id = $('#job-id').textContent
  try {
    const job = await api('POST', `/v1/jobs/${encodeURIComponent(id)}/retry`)
    notice(`Retrying as ${job.id}.`, 'info')
    location.hash = `#/jobs/${job.id}`
  } catch (err) {
    explain(err, 'retry this job')
  }
})

// -- routing --------------------------------------------------------------------------------

function stopTimers () {
  if (state.timer) clearInterval(state.timer)
  state.timer = null
  if (state.follow) state.follow.stop()
  state.follow = null
}

async function route () {
  stopTimers()
  $('#login').hidden = true
  $('#signout').hidden = !state.token
  $('#who').textContent = state.token ? 'with a token' : ''
  for (const id of ['#home', '#job']) $(id).hidden = true
  const match = location.hash.match(/^#\/jobs\/([A-Za-z0-9_-]+)$/)
  if (match) {
    await showJob(match[1])
  } else {
    $('#home').hidden = false
    await refreshHome()
    state.timer = setInterval(refreshHome, REFRESH_MS)
  }
}

window.addEventListener('hashchange', () => { notice(''); route() })
route()
