<?php

declare(strict_types=1);

namespace Outlast;

/** 429: the queue is full. Try again after `retryAfter` seconds. */
final class QueueFullException extends OutlastException
{
    public function __construct(string $message, float $retryAfter, int $status = 429, string $errorCode = 'queue_full')
    {
        parent::__construct($message, $status, $errorCode, null, $retryAfter);
    }
}
