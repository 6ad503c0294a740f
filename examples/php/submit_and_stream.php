<?php
// Ask an LLM through outlast and print the answer as it streams in, then stop reading after a
// few chunks, as a PHP request cut by max_execution_time or a closed browser would. outlast
// reads the upstream to its end anyway and keeps the whole answer: fetch_result.php gets it.
//
//   php submit_and_stream.php [MAX_CHUNKS]
//
// Environment: OUTLAST_URL (default http://127.0.0.1:8787), OUTLAST_TOKEN (when outlast has
// tokens), OUTLAST_UPSTREAM (the upstream's name in outlast.toml, default "llm"), OUTLAST_MODEL.
// outlast adds the upstream's API key from its own config: this script never holds it.

require __DIR__ . '/../../clients/php/autoload.php'; // or Composer's vendor/autoload.php

$outlast = new Outlast\Client(getenv('OUTLAST_URL') ?: 'http://127.0.0.1:8787', token: getenv('OUTLAST_TOKEN') ?: null);
$maxChunks = max(1, (int) ($argv[1] ?? 3));

try {
    $stream = $outlast->chat(getenv('OUTLAST_UPSTREAM') ?: 'llm', [
        'model' => getenv('OUTLAST_MODEL') ?: 'gpt-4o-mini',
        'messages' => [['role' => 'user', 'content' => 'Explain durable streams in one paragraph.']],
    ]);
    echo "job {$stream->jobId}\n"; // known before the first token: hand it to the browser now
    $chunks = 0;
    foreach ($stream as $chunk) {
        if (++$chunks === $maxChunks) {
            break;
        }
    }
    echo $stream->text(), "\n";
    echo "stopped reading after $chunks chunks; outlast finishes job {$stream->jobId}\n";
} catch (Outlast\OutlastException $e) {
    fwrite(STDERR, $e->getMessage() . "\n");
    exit(1);
}
