<?php
// A PHP-FPM page that streams a job's events to the browser (EventSource), resumable: when the
// browser reconnects it sends Last-Event-ID and gets the rest, no gap, no duplicate. When the
// browser leaves, the page stops and closes its connection to outlast at once; the job goes on.
//
//   new EventSource('/stream_to_browser.php?job=job_...')
//
// Behind nginx, SSE must not be buffered: sendEvents() sends X-Accel-Buffering: no.

require __DIR__ . '/../../clients/php/autoload.php';

$outlast = new Outlast\Client(getenv('OUTLAST_URL') ?: 'http://127.0.0.1:8787', token: getenv('OUTLAST_TOKEN') ?: null);
try {
    $outlast->sendEvents((string) ($_GET['job'] ?? ''), after: $_SERVER['HTTP_LAST_EVENT_ID'] ?? null);
} catch (Outlast\OutlastException $e) {
    // Before any event was sent (an unknown job, outlast unreachable): a plain error answer,
    // which also stops EventSource from reconnecting.
    if (!headers_sent()) {
        http_response_code($e->status === 404 ? 404 : 502);
    }
}
