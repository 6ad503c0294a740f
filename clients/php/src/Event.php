<?php

declare(strict_types=1);

namespace Outlast;

/**
 * One Server-Sent Event. `data` is the event's data string as sent; `id` is the last event id
 * in force when it arrived (for a job's events: its offset, which resumes right after it).
 */
final class Event
{
    public function __construct(
        public readonly string $event,
        public readonly string $data,
        public readonly ?string $id = null,
    ) {
    }

    /** The data decoded as JSON. */
    public function json(): mixed
    {
        try {
            return json_decode($this->data, true, 512, JSON_THROW_ON_ERROR);
        } catch (\JsonException $e) {
            throw new OutlastException("event data is not JSON: {$e->getMessage()}", 0, 'bad_event', $e);
        }
    }
}
