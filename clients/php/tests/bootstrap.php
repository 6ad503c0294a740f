<?php
// The tests' environment, set by tests/clients/test_php_client.py (the Python suite starts the
// servers and writes the fixtures):
//   OUTLAST_URL           an outlast without tokens, serving tests/cli_app.py's tasks, the
//                         fake upstream as "fake", and a queue "small" (concurrency 1, capacity 1)
//   OUTLAST_AUTH_URL      an outlast with tokens on; OUTLAST_AUTH_TOKEN is one of its tokens
//   OUTLAST_GATE_DIR      a folder where a test creates gate files that tasks wait for
//   OUTLAST_FAKE_TEXT     the whole answer the fake upstream's chat completion streams
//   OUTLAST_SSE_VECTORS   the SSE decoder's test vectors (tests/sse/vectors.py), as JSON
//   OUTLAST_WEBHOOK_VECTORS  deliveries signed by the PyPI standardwebhooks package, as JSON
declare(strict_types=1);

require __DIR__ . '/../autoload.php';

function outlast_env(string $name): string
{
    $value = getenv($name);
    if ($value === false || $value === '') {
        throw new RuntimeException("$name is not set: run these tests through scripts/test (tests/clients/test_php_client.py)");
    }
    return $value;
}
