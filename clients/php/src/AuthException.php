<?php

declare(strict_types=1);

namespace Outlast;

/** 401 or 403: the token is missing, unknown, or lacks the scope this call needs. */
final class AuthException extends OutlastException
{
}
