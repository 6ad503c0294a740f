<?php

declare(strict_types=1);

namespace Outlast\Tests;

use Outlast\Webhook;
use Outlast\WebhookException;
use PHPUnit\Framework\TestCase;

/** Webhook::verify on deliveries signed by the PyPI `standardwebhooks` package. */
final class WebhookTest extends TestCase
{
    /** @return array<string, mixed> */
    private static function fixture(): array
    {
        return json_decode((string) file_get_contents(outlast_env('OUTLAST_WEBHOOK_VECTORS')), true, 512, JSON_THROW_ON_ERROR);
    }

    /** @return array<string, string> */
    private static function headers(array $delivery): array
    {
        return [
            'webhook-id' => $delivery['id'],
            'webhook-timestamp' => (string) $delivery['timestamp'],
            'webhook-signature' => $delivery['signature'],
        ];
    }

    public function testAValidDeliveryVerifies(): void
    {
        $f = self::fixture();
        $payload = Webhook::verify($f['body'], self::headers($f), $f['secret'], now: $f['timestamp'] + 10);
        $this->assertSame('job.succeeded', $payload['type']);
        $this->assertSame($f['job_id'], $payload['data']['id']);
    }

    public function testHeaderNamesInAnyCaseAndSeveralSignatures(): void
    {
        $f = self::fixture();
        $headers = [
            'Webhook-Id' => $f['id'],
            'WEBHOOK-TIMESTAMP' => (string) $f['timestamp'],
            // A rotated secret's signature first, then the current one.
            'Webhook-Signature' => 'v1,' . base64_encode(random_bytes(32)) . ' ' . $f['signature'],
        ];
        $payload = Webhook::verify($f['body'], $headers, $f['secret'], now: $f['timestamp']);
        $this->assertSame($f['job_id'], $payload['data']['id']);
    }

    public function testATamperedBodyIsRefused(): void
    {
        $f = self::fixture();
        $this->expectException(WebhookException::class);
        Webhook::verify(str_replace('succeeded', 'failed', $f['body']), self::headers($f), $f['secret'], now: $f['timestamp']);
    }

    public function testAnotherSecretIsRefused(): void
    {
        $f = self::fixture();
        $this->expectException(WebhookException::class);
        Webhook::verify($f['body'], self::headers($f), 'whsec_' . base64_encode(random_bytes(24)), now: $f['timestamp']);
    }

    public function testAStaleTimestampIsRefused(): void
    {
        $f = self::fixture();
        $this->expectException(WebhookException::class);
        $this->expectExceptionMessage('too old');
        Webhook::verify($f['body'], self::headers($f), $f['secret'], now: $f['timestamp'] + 301);
    }

    public function testMissingHeadersAreRefused(): void
    {
        $f = self::fixture();
        $headers = self::headers($f);
        unset($headers['webhook-signature']);
        $this->expectException(WebhookException::class);
        Webhook::verify($f['body'], $headers, $f['secret'], now: $f['timestamp']);
    }

    public function testOurSignatureVerifiesWhereStandardwebhooksSignedItToo(): void
    {
        // The same id, timestamp and body signed here must give the library's exact signature.
        $f = self::fixture();
        $key = base64_decode(substr($f['secret'], 6), true);
        $ours = 'v1,' . base64_encode(hash_hmac('sha256', "{$f['id']}.{$f['timestamp']}.{$f['body']}", $key, true));
        $this->assertSame($f['signature'], $ours);
    }
}
