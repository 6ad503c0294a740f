<?php

declare(strict_types=1);

namespace Outlast;

/** Webhook::verify refused a delivery: a header is missing, the timestamp is stale, or no signature matches. */
final class WebhookException extends OutlastException
{
}
