<?php

declare(strict_types=1);

namespace Outlast;

/**
 * Verifies a webhook delivery as the Standard Webhooks specification says: the signature is
 * `v1,` + base64(HMAC-SHA256(secret, "<webhook-id>.<webhook-timestamp>.<body>")), where the
 * secret is the base64 after the `whsec_` prefix; the timestamp must be within `tolerance`
 * seconds of now (so a captured delivery cannot be replayed later).
 */
final class Webhook
{
    /**
     * @param string $body the raw request body (file_get_contents('php://input'))
     * @param array<string, string|list<string>> $headers name => value, any letter case
     *                                                    (getallheaders() gives this)
     * @param string $secret the `[webhooks] secret` of outlast's config (whsec_...)
     * @return array<string, mixed> the decoded payload: type, timestamp, data (the job)
     * @throws WebhookException when the delivery is not authentic
     */
    public static function verify(string $body, array $headers, string $secret, int $tolerance = 300, ?int $now = null): array
    {
        $lower = [];
        foreach ($headers as $name => $value) {
            $lower[strtolower((string) $name)] = is_array($value) ? implode(' ', $value) : (string) $value;
        }
        $id = $lower['webhook-id'] ?? '';
        $timestamp = $lower['webhook-timestamp'] ?? '';
        $signatures = $lower['webhook-signature'] ?? '';
        if ($id === '' || $timestamp === '' || $signatures === '') {
            throw new WebhookException('missing webhook-id, webhook-timestamp or webhook-signature header', 400, 'webhook_headers');
        }
        if (!ctype_digit($timestamp)) {
            throw new WebhookException('webhook-timestamp is not a number of seconds', 400, 'webhook_timestamp');
        }
        $now ??= time();
        if (abs($now - (int) $timestamp) > $tolerance) {
            throw new WebhookException('webhook-timestamp is too old or too far in the future', 400, 'webhook_timestamp');
        }
        $key = base64_decode(str_starts_with($secret, 'whsec_') ? substr($secret, 6) : $secret, true);
        if ($key === false || $key === '') {
            throw new \InvalidArgumentException('the webhook secret is not base64 after its whsec_ prefix');
        }
        $expected = base64_encode(hash_hmac('sha256', "$id.$timestamp.$body", $key, true));
        foreach (preg_split('/\s+/', trim($signatures)) as $signature) {
            [$version, $value] = array_pad(explode(',', $signature, 2), 2, '');
            if ($version === 'v1' && hash_equals($expected, $value)) {
                $payload = json_decode($body, true);
                if (!is_array($payload)) {
                    throw new WebhookException('the webhook body is not a JSON object', 400, 'webhook_body');
                }
                return $payload;
            }
        }
        throw new WebhookException('no webhook signature matches', 400, 'webhook_signature');
    }
}
