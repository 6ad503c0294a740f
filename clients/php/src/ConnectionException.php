<?php

declare(strict_types=1);

namespace Outlast;

/** outlast could not be reached, did not answer in time, or the connection broke. */
final class ConnectionException extends OutlastException
{
}
