<?php
// A webhook route: outlast POSTs here when a job ends (see docs/webhooks.md). Serve it with
// PHP-FPM or `php -S`; OUTLAST_WEBHOOK_SECRET is the `[webhooks] secret` of outlast.toml.

require __DIR__ . '/../../clients/php/autoload.php';

try {
    $event = Outlast\Webhook::verify(file_get_contents('php://input'), getallheaders(), getenv('OUTLAST_WEBHOOK_SECRET'));
} catch (Outlast\WebhookException $e) {
    http_response_code(400); // not from outlast, or replayed: outlast never sends such a request
    exit;
}
// Deliveries are at least once: de-duplicate by the webhook-id header.
$job = $event['data'];
error_log("outlast: {$event['type']} for {$job['id']}");
http_response_code(204);
