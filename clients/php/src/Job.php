<?php

declare(strict_types=1);

namespace Outlast;

/**
 * A job as outlast showed it at one moment (`GET /v1/jobs/<id>`). Read-only: fetch it again
 * (Client::job, Client::wait) to see it move.
 */
final class Job
{
    public const TERMINAL = ['succeeded', 'failed', 'cancelled'];

    public readonly string $id;
    public readonly string $task;
    public readonly string $queue;
    /** queued | running | succeeded | failed | cancelled */
    public readonly string $state;
    public readonly mixed $input;
    public readonly mixed $result;
    /** @var array{code: string, message: string}|null */
    public readonly ?array $error;
    public readonly int $attempt;
    public readonly int $maxAttempts;
    public readonly ?string $createdAt;
    public readonly ?string $startedAt;
    public readonly ?string $finishedAt;
    /** @var array<string, mixed> every field as outlast sent it */
    public readonly array $raw;

    /** @param array<string, mixed> $job */
    public function __construct(array $job)
    {
        $this->raw = $job;
        $this->id = (string) ($job['id'] ?? '');
        $this->task = (string) ($job['task'] ?? '');
        $this->queue = (string) ($job['queue'] ?? '');
        $this->state = (string) ($job['state'] ?? '');
        $this->input = $job['input'] ?? null;
        $this->result = $job['result'] ?? null;
        $this->error = isset($job['error']) && is_array($job['error']) ? $job['error'] : null;
        $this->attempt = (int) ($job['attempt'] ?? 0);
        $this->maxAttempts = (int) ($job['max_attempts'] ?? 0);
        $this->createdAt = $job['created_at'] ?? null;
        $this->startedAt = $job['started_at'] ?? null;
        $this->finishedAt = $job['finished_at'] ?? null;
    }

    public function isTerminal(): bool
    {
        return in_array($this->state, self::TERMINAL, true);
    }
}
