<?php

declare(strict_types=1);

namespace Outlast;

/**
 * The root of every error this client throws.
 *
 *   OutlastException            an error answer from outlast (status, errorCode from its body)
 *   ├── QueueFullException      429: the queue is at capacity; retry after ->retryAfter seconds
 *   ├── AuthException           401 / 403: missing, wrong or insufficient token
 *   ├── ConnectionException     outlast could not be reached, or the connection broke
 *   └── WebhookException        Webhook::verify refused a delivery
 */
class OutlastException extends \RuntimeException
{
    /**
     * @param int $status the HTTP status outlast answered (0 when there was no answer)
     * @param string $errorCode the `error.code` of outlast's answer, e.g. "not_found"
     */
    public function __construct(
        string $message,
        public readonly int $status = 0,
        public readonly string $errorCode = '',
        ?\Throwable $previous = null,
        /** seconds outlast asked to wait before trying again (429, 503), when it said */
        public readonly ?float $retryAfter = null,
    ) {
        parent::__construct($message, $status, $previous);
    }
}
