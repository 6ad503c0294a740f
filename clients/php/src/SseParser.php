<?php

declare(strict_types=1);

namespace Outlast;

/**
 * A Server-Sent Events parser following the WHATWG rules, fed bytes as they arrive.
 *
 * It knows no socket: feed() takes any chunk of the body (lines and CRLF pairs may be cut
 * anywhere) and returns the events completed by it. One leading BOM is dropped; lines end at
 * CR, LF or CRLF; comment lines (":...") are ignored; one space after the colon is dropped;
 * `id` containing NUL is ignored; `retry` counts only when all ASCII digits; a block with no
 * `data` dispatches nothing; an unfinished last event is dropped by close(). Invalid UTF-8 is
 * replaced by U+FFFD. Memory is bounded: a line or an event over its limit throws.
 */
final class SseParser
{
    private string $buffer = '';
    private bool $started = false;
    private bool $afterCr = false;
    private string $eventType = '';
    /** @var list<string> */
    private array $data = [];
    private bool $hasData = false;
    private int $eventBytes = 0;
    private int $comments = 0;
    private ?string $idBuffer = null;

    /** The id that a reconnect would send as Last-Event-ID (null until a stream sets one). */
    public ?string $lastEventId = null;
    /** The reconnection time asked for by the stream, in milliseconds. */
    public ?int $retry = null;

    public function __construct(
        private readonly int $maxLineBytes = 1 << 20,
        private readonly int $maxEventBytes = 8 << 20,
    ) {
    }

    /** Comment lines seen so far (outlast's keepalives are `: ping`). */
    public function comments(): int
    {
        return $this->comments;
    }

    /** @return list<Event> the events this chunk completed */
    public function feed(string $chunk): array
    {
        if ($chunk === '') {
            return [];
        }
        if ($this->afterCr) {
            // A CRLF torn between two chunks: the LF belongs to the line already ended.
            $this->afterCr = false;
            if ($chunk[0] === "\n") {
                $chunk = substr($chunk, 1);
            }
        }
        $this->buffer .= $chunk;
        if (!$this->started) {
            if (strlen($this->buffer) < 3 && str_starts_with("\xEF\xBB\xBF", $this->buffer)) {
                return []; // maybe a BOM, not whole yet
            }
            $this->started = true;
            if (str_starts_with($this->buffer, "\xEF\xBB\xBF")) {
                $this->buffer = substr($this->buffer, 3);
            }
        }
        $events = [];
        $pos = 0;
        $length = strlen($this->buffer);
        while ($pos < $length) {
            $end = strcspn($this->buffer, "\r\n", $pos) + $pos;
            if ($end >= $length) {
                break; // no line end yet
            }
            $line = substr($this->buffer, $pos, $end - $pos);
            if ($this->buffer[$end] === "\r") {
                if ($end + 1 < $length) {
                    $pos = $this->buffer[$end + 1] === "\n" ? $end + 2 : $end + 1;
                } else {
                    $pos = $end + 1;
                    $this->afterCr = true;
                }
            } else {
                $pos = $end + 1;
            }
            $event = $this->line($line);
            if ($event !== null) {
                $events[] = $event;
            }
        }
        $this->buffer = (string) substr($this->buffer, $pos);
        if (strlen($this->buffer) > $this->maxLineBytes) {
            throw new OutlastException("an SSE line is longer than {$this->maxLineBytes} bytes", 0, 'sse_limit');
        }
        return $events;
    }

    /**
     * The stream ended: an unfinished event is dropped, as the WHATWG rules say.
     *
     * @return list<Event>
     */
    public function close(): array
    {
        $this->buffer = '';
        $this->resetEvent();
        return [];
    }

    private function line(string $line): ?Event
    {
        if ($line === '') {
            return $this->dispatch();
        }
        if ($line[0] === ':') {
            $this->comments++;
            return null;
        }
        $line = self::utf8($line);
        $colon = strpos($line, ':');
        if ($colon === false) {
            $field = $line;
            $value = '';
        } else {
            $field = substr($line, 0, $colon);
            $value = substr($line, $colon + 1);
            if ($value !== '' && $value[0] === ' ') {
                $value = substr($value, 1);
            }
        }
        switch ($field) {
            case 'event':
                $this->eventType = $value;
                break;
            case 'data':
                $this->eventBytes += strlen($value) + 1;
                if ($this->eventBytes > $this->maxEventBytes) {
                    throw new OutlastException("an SSE event is larger than {$this->maxEventBytes} bytes", 0, 'sse_limit');
                }
                $this->data[] = $value;
                $this->hasData = true;
                break;
            case 'id':
                if (!str_contains($value, "\0")) {
                    $this->idBuffer = $value;
                }
                break;
            case 'retry':
                if ($value !== '' && strspn($value, '0123456789') === strlen($value)) {
                    $this->retry = (int) $value;
                }
                break;
        }
        return null;
    }

    private function dispatch(): ?Event
    {
        $this->lastEventId = $this->idBuffer;
        if (!$this->hasData) {
            $this->resetEvent();
            return null;
        }
        $event = new Event(
            $this->eventType === '' ? 'message' : $this->eventType,
            implode("\n", $this->data),
            $this->idBuffer,
        );
        $this->resetEvent();
        return $event;
    }

    private function resetEvent(): void
    {
        $this->eventType = '';
        $this->data = [];
        $this->hasData = false;
        $this->eventBytes = 0;
    }

    /** The line as valid UTF-8: each invalid sequence becomes U+FFFD. */
    private static function utf8(string $s): string
    {
        if (preg_match('//u', $s) === 1) {
            return $s;
        }
        return json_decode(json_encode($s, JSON_INVALID_UTF8_SUBSTITUTE | JSON_THROW_ON_ERROR), true);
    }
}
