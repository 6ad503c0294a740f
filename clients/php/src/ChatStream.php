<?php

declare(strict_types=1);

namespace Outlast;

/**
 * A streaming chat answer being read by outlast as relay job `jobId`. Iterate it for the
 * decoded chunks (arrays, as the upstream sent them; `[DONE]` ends the iteration). The job id is
 * known before the first token, so a page can hand it to the browser at once; stop iterating
 * whenever you like and outlast still reads the answer to its end.
 *
 * @implements \IteratorAggregate<int, array<string, mixed>>
 */
final class ChatStream implements \IteratorAggregate
{
    private string $text = '';
    private ?string $lastEventId = null;

    public function __construct(private readonly Client $client, public readonly string $jobId)
    {
    }

    /** @return \Generator<int, array<string, mixed>> */
    public function getIterator(): \Generator
    {
        foreach ($this->client->events($this->jobId, $this->lastEventId) as $event) {
            $this->lastEventId = $event->id;
            if (str_starts_with($event->event, 'outlast.')) {
                $message = $event->json();
                $ended = ($message['type'] ?? null) === 'state' ? ($message['state'] ?? null) : null;
                if ($ended === 'failed' || $ended === 'cancelled') {
                    $job = $this->client->job($this->jobId);
                    $error = $job->error ?? ['code' => $job->state, 'message' => "the job was {$job->state}"];
                    $detail = isset($error['body']) ? ": {$error['body']}" : '';
                    throw new OutlastException(
                        "job {$this->jobId} {$job->state}: {$error['message']}$detail",
                        (int) ($error['status'] ?? 0),
                        (string) $error['code'],
                    );
                }
                continue; // outlast's own messages: states, results
            }
            if ($event->data === '[DONE]') {
                continue; // the job's end closes the stream right after
            }
            $chunk = $event->json();
            if (!is_array($chunk)) {
                continue;
            }
            $this->text .= (string) ($chunk['choices'][0]['delta']['content'] ?? '');
            yield $chunk;
        }
    }

    /** The text of the chunks iterated so far. */
    public function text(): string
    {
        return $this->text;
    }

    /** The job as it is now: once it has succeeded, `result['text']` holds the whole answer. */
    public function job(): Job
    {
        return $this->client->job($this->jobId);
    }
}
