<?php

declare(strict_types=1);

namespace Outlast;

/**
 * outlast's JSON API and event streams, for PHP apps (ext-curl and ext-json only).
 *
 *   $outlast = new Outlast\Client('http://127.0.0.1:8787', token: getenv('OUTLAST_TOKEN') ?: null);
 *   $job = $outlast->submit('relay', $input);
 *   foreach ($outlast->events($job->id) as $event) { ... }
 *
 * Every error is an OutlastException (see its docblock for the tree).
 */
final class Client
{
    /** The options submit() sends as job fields; anything else is refused before any request. */
    private const JOB_OPTIONS = [
        'queue', 'timeout', 'retries', 'delay', 'key', 'callback', 'priority', 'concurrency_key',
    ];

    private readonly string $baseUrl;

    /**
     * @param string $baseUrl where outlast listens
     * @param string|null $token a bearer token, when outlast has tokens configured
     * @param float $timeout seconds for a whole request (not for event streams, which are live)
     * @param float $connectTimeout seconds to connect
     * @param int $retries how many times submit() tries again after a connection error or 503
     */
    public function __construct(
        string $baseUrl = 'http://127.0.0.1:8787',
        private readonly ?string $token = null,
        private readonly float $timeout = 30.0,
        private readonly float $connectTimeout = 5.0,
        private readonly int $retries = 3,
    ) {
        $this->baseUrl = rtrim($baseUrl, '/');
    }

    /**
     * Submits a job. Without a `key` option a random idempotency key is sent, so that the
     * retries this method makes (connection errors, 503 while outlast restarts) never run the
     * job twice.
     *
     * @param array<string, mixed> $options queue, timeout, retries, delay, key, callback,
     *                                      priority, concurrency_key
     * @throws QueueFullException when the queue is at capacity (429)
     */
    public function submit(string $task, mixed $input = null, array $options = []): Job
    {
        $unknown = array_diff(array_keys($options), self::JOB_OPTIONS);
        if ($unknown !== []) {
            throw new \InvalidArgumentException('unknown submit option(s): ' . implode(', ', $unknown));
        }
        $body = ['task' => $task] + ($input === null ? [] : ['input' => $input]) + $options;
        $body['key'] ??= 'php-' . bin2hex(random_bytes(16));
        return new Job($this->withRetries(fn () => $this->request('POST', '/v1/jobs', $body)));
    }

    /** The job as it is now. */
    public function job(string $id): Job
    {
        return new Job($this->request('GET', '/v1/jobs/' . rawurlencode($id)));
    }

    /**
     * Waits until the job is terminal or `timeout` seconds have passed, and returns it in
     * whatever state it then has (no exception when time runs out).
     */
    public function wait(string $id, float $timeout = 60.0): Job
    {
        $deadline = microtime(true) + $timeout;
        while (true) {
            $left = $deadline - microtime(true);
            $wait = max(0.0, min($left, 30.0)); // outlast caps one long-poll; ask again until done
            $job = new Job($this->request(
                'GET',
                '/v1/jobs/' . rawurlencode($id) . '?wait=' . sprintf('%.3F', $wait),
                null,
                $this->timeout + $wait,
            ));
            if ($job->isTerminal() || $left <= 0) {
                return $job;
            }
        }
    }

    /** Cancels the job (idempotent; a terminal job is returned as it is). */
    public function cancel(string $id): Job
    {
        return new Job($this->request('POST', '/v1/jobs/' . rawurlencode($id) . '/cancel'));
    }

    /** A new job that runs a failed or cancelled job again (its `retry_of` names the old one). */
    public function retry(string $id): Job
    {
        return new Job($this->request('POST', '/v1/jobs/' . rawurlencode($id) . '/retry'));
    }

    /**
     * A page of jobs, newest first.
     *
     * @param array<string, string|int> $filters state, queue, task, limit, cursor
     * @return array{jobs: list<Job>, next: string|null}
     */
    public function list(array $filters = []): array
    {
        $query = $filters === [] ? '' : '?' . http_build_query($filters);
        $page = $this->request('GET', '/v1/jobs' . $query);
        return [
            'jobs' => array_map(static fn (array $job) => new Job($job), $page['jobs'] ?? []),
            'next' => $page['next'] ?? null,
        ];
    }

    /**
     * The job's events as they come: what it already produced, then live until it ends.
     * Resumes by itself after a dropped connection, without gap or duplicate; `after` resumes
     * after an event id seen before (a browser's Last-Event-ID). Stop iterating at any time:
     * the connection to outlast is closed at once, and the job goes on.
     *
     * @return \Generator<int, Event>
     */
    public function events(string $id, ?string $after = null): \Generator
    {
        foreach ($this->follow('/v1/jobs/' . rawurlencode($id) . '/events', $after) as $event) {
            if ($event !== null) {
                yield $event;
            }
        }
    }

    /**
     * Starts an OpenAI-style streaming chat request to upstream `$upstream` (a name from
     * outlast's config) as a relay job. The job id is known at once, before the first token;
     * iterate the stream for the decoded chunks. Abandon it whenever you like: outlast reads the
     * answer to its end and keeps it (Client::job($stream->jobId)->result['text']).
     *
     * @param array<string, mixed> $request the chat completions request body
     * @param array<string, mixed> $options submit() options, plus `path` (default
     *                                      /v1/chat/completions)
     */
    public function chat(string $upstream, array $request, array $options = []): ChatStream
    {
        $path = $options['path'] ?? '/v1/chat/completions';
        unset($options['path']);
        $request['stream'] = true;
        $job = $this->submit('relay', [
            'upstream' => $upstream,
            'path' => $path,
            'method' => 'POST',
            'body' => $request,
        ], $options);
        return new ChatStream($this, $job->id);
    }

    /**
     * Relays the job's events to this PHP request's own client as Server-Sent Events: sets the
     * headers (no proxy buffering), resumes after `after` (pass the browser's Last-Event-ID, so
     * an EventSource that reconnects misses nothing and gets nothing twice), flushes each event,
     * and answers 204 once the job has ended and everything was sent (EventSource then stops).
     *
     * When the browser leaves, it stops at the next write (an event or a keepalive, at most
     * `keepalive` seconds apart) and closes its connection to outlast at once. It turns PHP's
     * abort-on-disconnect off for that: left on, PHP would end the script inside curl and keep
     * the worker's connection to outlast open until the worker exits.
     */
    public function sendEvents(string $id, ?string $after = null, float $keepalive = 10.0): void
    {
        ignore_user_abort(true);
        $opened = false;
        $onStatus = static function (int $status) use (&$opened): void {
            if ($status !== 200 || $opened || headers_sent()) {
                return;
            }
            $opened = true;
            header('Content-Type: text/event-stream');
            header('Cache-Control: no-cache');
            header('X-Accel-Buffering: no');
            while (ob_get_level() > 0) {
                ob_end_flush();
            }
            flush();
        };
        $lastWrite = microtime(true);
        $path = '/v1/jobs/' . rawurlencode($id) . '/events';
        foreach ($this->follow($path, $after, 1.0, $onStatus) as $event) {
            if ($event === null) {
                if (microtime(true) - $lastWrite < $keepalive) {
                    continue;
                }
                echo ": ping\n\n";
            } else {
                echo self::formatEvent($event);
            }
            flush();
            $lastWrite = microtime(true);
            if (connection_aborted()) {
                return; // leaving the loop destroys the generator, which closes curl's handle
            }
        }
        if (!$opened && !headers_sent()) {
            http_response_code(204); // ended and all sent: tells EventSource to stop for good
        }
    }

    /** Creates a stream (idempotent with the same content type). */
    public function createStream(string $name, string $contentType = 'application/json'): void
    {
        $this->raw('PUT', '/v1/stream/' . self::streamPath($name), null, ['Content-Type: ' . $contentType]);
    }

    /**
     * Appends to a stream: an array is sent as one JSON message, a string as it is.
     *
     * @return string the stream's next offset after this append
     */
    public function append(string $name, mixed $data, string $contentType = 'application/json'): string
    {
        $body = is_string($data) ? $data : self::encode($data);
        [, $headers] = $this->raw('POST', '/v1/stream/' . self::streamPath($name), $body, ['Content-Type: ' . $contentType]);
        return $headers['stream-next-offset'] ?? '';
    }

    /**
     * Reads a stream from `offset` (`-1` = its start) up to what is there now.
     *
     * @return array{data: string, next: string, upToDate: bool, closed: bool} `data` is the body
     *         as sent: for a JSON stream, a JSON array of the messages
     */
    public function read(string $name, string $offset = '-1'): array
    {
        [$body, $headers] = $this->raw('GET', '/v1/stream/' . self::streamPath($name) . '?offset=' . rawurlencode($offset));
        return [
            'data' => $body,
            'next' => $headers['stream-next-offset'] ?? $offset,
            'upToDate' => isset($headers['stream-up-to-date']),
            'closed' => isset($headers['stream-closed']),
        ];
    }

    /**
     * A JSON request. Returns the decoded body.
     *
     * @return array<string, mixed>
     */
    private function request(string $method, string $path, mixed $body = null, ?float $timeout = null): array
    {
        $headers = ['Accept: application/json'];
        $payload = null;
        if ($body !== null) {
            $payload = self::encode($body);
            $headers[] = 'Content-Type: application/json';
        }
        [$text] = $this->raw($method, $path, $payload, $headers, $timeout);
        if ($text === '') {
            return [];
        }
        try {
            $decoded = json_decode($text, true, 512, JSON_THROW_ON_ERROR);
        } catch (\JsonException $e) {
            throw new OutlastException("outlast answered something that is not JSON: {$e->getMessage()}", 0, 'bad_response', $e);
        }
        return is_array($decoded) ? $decoded : [];
    }

    /**
     * One HTTP request; a non-2xx answer becomes the matching exception.
     *
     * @param list<string> $headers
     * @return array{0: string, 1: array<string, string>} body and lower-cased headers
     */
    private function raw(string $method, string $path, ?string $body = null, array $headers = [], ?float $timeout = null): array
    {
        $responseHeaders = [];
        $ch = curl_init($this->baseUrl . $path);
        curl_setopt_array($ch, $this->curlOptions($headers) + [
            CURLOPT_CUSTOMREQUEST => $method,
            CURLOPT_RETURNTRANSFER => true,
            CURLOPT_TIMEOUT_MS => (int) (($timeout ?? $this->timeout) * 1000),
            CURLOPT_HEADERFUNCTION => static function ($ch, string $line) use (&$responseHeaders): int {
                $parts = explode(':', $line, 2);
                if (count($parts) === 2) {
                    $responseHeaders[strtolower(trim($parts[0]))] = trim($parts[1]);
                } elseif (str_starts_with($line, 'HTTP/')) {
                    $responseHeaders = []; // a new response (after 100 Continue)
                }
                return strlen($line);
            },
        ]);
        if ($body !== null) {
            curl_setopt($ch, CURLOPT_POSTFIELDS, $body);
        }
        $text = curl_exec($ch);
        $status = (int) curl_getinfo($ch, CURLINFO_RESPONSE_CODE);
        $errno = curl_errno($ch);
        $error = curl_error($ch);
        curl_close($ch);
        if ($text === false || $errno !== 0) {
            throw new ConnectionException("cannot reach outlast at {$this->baseUrl}: $error", 0, 'connection');
        }
        if ($status >= 300) {
            throw self::errorFor($status, (string) $text, $responseHeaders);
        }
        return [(string) $text, $responseHeaders];
    }

    /**
     * Follows an SSE endpoint, reconnecting after a dropped connection from the last event id.
     * Yields each event, and null on each idle tick (for keepalives). Ends at a clean end of a
     * stream whose job reached a terminal state, or at a 204.
     *
     * @param callable(int): void|null $onStatus told the status of each answer
     * @return \Generator<int, Event|null>
     */
    private function follow(string $path, ?string $after, float $tick = 1.0, ?callable $onStatus = null): \Generator
    {
        $lastId = $after;
        $failures = 0;
        while (true) {
            $headers = ['Accept: text/event-stream', 'Cache-Control: no-cache'];
            if ($lastId !== null && $lastId !== '') {
                $headers[] = 'Last-Event-ID: ' . $lastId;
            }
            $parser = new SseParser();
            $queue = [];
            $status = 0;
            $errorBody = '';
            $responseHeaders = [];
            $ch = curl_init($this->baseUrl . $path);
            curl_setopt_array($ch, $this->curlOptions($headers) + [
                // Live: no total time limit, but a connection that stays silent past several
                // keepalive intervals is dead.
                CURLOPT_LOW_SPEED_LIMIT => 1,
                CURLOPT_LOW_SPEED_TIME => 60,
                CURLOPT_HEADERFUNCTION => static function ($ch, string $line) use (&$status, &$responseHeaders): int {
                    if (str_starts_with($line, 'HTTP/')) {
                        $status = (int) (explode(' ', $line, 3)[1] ?? 0);
                        $responseHeaders = [];
                    } elseif (str_contains($line, ':')) {
                        [$name, $value] = explode(':', $line, 2);
                        $responseHeaders[strtolower(trim($name))] = trim($value);
                    }
                    return strlen($line);
                },
                CURLOPT_WRITEFUNCTION => static function ($ch, string $chunk) use (&$status, &$queue, &$errorBody, $parser): int {
                    if ($status === 200) {
                        array_push($queue, ...$parser->feed($chunk));
                    } elseif (strlen($errorBody) < 65536) {
                        $errorBody .= $chunk;
                    }
                    return strlen($chunk);
                },
            ]);
            $multi = curl_multi_init();
            curl_multi_add_handle($multi, $ch);
            $reported = false;
            $terminal = false;
            try {
                do {
                    do {
                        $code = curl_multi_exec($multi, $running);
                    } while ($code === CURLM_CALL_MULTI_PERFORM);
                    if (!$reported && $status !== 0 && ($queue !== [] || !$running)) {
                        $reported = true;
                        if ($onStatus !== null) {
                            $onStatus($status);
                        }
                    }
                    while ($queue !== []) {
                        $event = array_shift($queue);
                        $lastId = $event->id ?? $lastId;
                        $terminal = $terminal || self::endsJob($event);
                        $failures = 0;
                        yield $event;
                    }
                    if ($running && curl_multi_select($multi, $tick) === 0) {
                        yield null;
                    }
                } while ($running);
                $errno = curl_errno($ch);
                $error = curl_error($ch);
            } finally {
                curl_multi_remove_handle($multi, $ch);
                curl_close($ch);
                curl_multi_close($multi);
            }
            if ($onStatus !== null && !$reported && $status !== 0) {
                $onStatus($status);
            }
            if ($errno === 0 && $status === 204) {
                return; // the job has ended and everything was sent before
            }
            if ($errno === 0 && $status === 200 && $terminal) {
                return;
            }
            if ($errno === 0 && $status >= 300 && $status !== 503) {
                throw self::errorFor($status, $errorBody, $responseHeaders);
            }
            // A dropped or ended connection (outlast restarting, a proxy timeout): resume from
            // the last event id, after a pause that grows while nothing comes through.
            $failures++;
            if ($failures > 8) {
                throw $errno !== 0
                    ? new ConnectionException("lost the event stream from outlast: $error", 0, 'connection')
                    : self::errorFor($status, $errorBody, $responseHeaders);
            }
            if ($failures > 1 || $errno !== 0 || $status === 503) {
                $retryAfter = (float) ($responseHeaders['retry-after'] ?? 0);
                usleep((int) (max($retryAfter, min(5.0, 0.25 * 2 ** ($failures - 1))) * 1_000_000));
            }
        }
    }

    /** Whether this event of a job's stream says the job reached a terminal state. */
    private static function endsJob(Event $event): bool
    {
        if ($event->event !== 'outlast.state') {
            return false;
        }
        $message = json_decode($event->data, true);
        return is_array($message) && in_array($message['state'] ?? null, Job::TERMINAL, true);
    }

    /** @param list<string> $headers */
    private function curlOptions(array $headers): array
    {
        if ($this->token !== null && $this->token !== '') {
            $headers[] = 'Authorization: Bearer ' . $this->token;
        }
        return [
            CURLOPT_HTTPHEADER => $headers,
            CURLOPT_CONNECTTIMEOUT_MS => (int) ($this->connectTimeout * 1000),
            CURLOPT_FOLLOWLOCATION => false,
            CURLOPT_PROTOCOLS => CURLPROTO_HTTP | CURLPROTO_HTTPS,
            // Each request has its own connection, closed with it: nothing lingers in a pool
            // after an abandoned stream.
            CURLOPT_FORBID_REUSE => true,
        ];
    }

    /** @template T @param callable(): T $call @return T */
    private function withRetries(callable $call): mixed
    {
        for ($attempt = 0; ; $attempt++) {
            try {
                return $call();
            } catch (ConnectionException $e) {
                $wait = min(5.0, 0.25 * 2 ** $attempt);
                if ($attempt >= $this->retries) {
                    throw $e;
                }
            } catch (OutlastException $e) {
                if ($e->status !== 503 || $attempt >= $this->retries) {
                    throw $e;
                }
                $wait = $e->retryAfter ?? min(5.0, 0.25 * 2 ** $attempt);
            }
            usleep((int) ($wait * 1_000_000));
        }
    }

    /** @param array<string, string> $headers */
    private static function errorFor(int $status, string $body, array $headers): OutlastException
    {
        $decoded = json_decode($body, true);
        $error = is_array($decoded) && is_array($decoded['error'] ?? null) ? $decoded['error'] : [];
        $code = (string) ($error['code'] ?? 'http_' . $status);
        $message = "outlast answered $status: " . (string) ($error['message'] ?? trim(substr($body, 0, 200)));
        $retryAfter = (float) ($error['retry_after'] ?? $headers['retry-after'] ?? 1);
        return match (true) {
            $status === 429 => new QueueFullException($message, $retryAfter, $status, $code),
            $status === 401, $status === 403 => new AuthException($message, $status, $code),
            default => new OutlastException($message, $status, $code, null, isset($headers['retry-after']) ? $retryAfter : null),
        };
    }

    private static function encode(mixed $value): string
    {
        try {
            return json_encode($value, JSON_THROW_ON_ERROR | JSON_UNESCAPED_SLASHES | JSON_UNESCAPED_UNICODE);
        } catch (\JsonException $e) {
            throw new \InvalidArgumentException("cannot encode as JSON: {$e->getMessage()}", 0, $e);
        }
    }

    private static function streamPath(string $name): string
    {
        return implode('/', array_map('rawurlencode', explode('/', $name)));
    }

    /** An event in the SSE wire format, for a browser. */
    public static function formatEvent(Event $event): string
    {
        $out = '';
        if ($event->id !== null) {
            $out .= 'id: ' . $event->id . "\n";
        }
        if ($event->event !== 'message') {
            $out .= 'event: ' . $event->event . "\n";
        }
        foreach (preg_split('/\r\n|\r|\n/', $event->data) as $line) {
            $out .= 'data: ' . $line . "\n";
        }
        return $out . "\n";
    }
}
