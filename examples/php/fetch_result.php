<?php
// Fetch a job's outcome from outlast, waiting for it to finish: for a relay, the whole text of
// the answer, however early the script that asked for it stopped reading.
//
//   php fetch_result.php JOB_ID
//
// Environment: OUTLAST_URL (default http://127.0.0.1:8787), OUTLAST_TOKEN (when tokens are on).

require __DIR__ . '/../../clients/php/autoload.php';

$outlast = new Outlast\Client(getenv('OUTLAST_URL') ?: 'http://127.0.0.1:8787', token: getenv('OUTLAST_TOKEN') ?: null);
try {
    $job = $outlast->wait($argv[1] ?? '', timeout: 600);
} catch (Outlast\OutlastException $e) {
    fwrite(STDERR, $e->getMessage() . "\n");
    exit(1);
}

echo "state {$job->state}\n";
if ($job->state !== 'succeeded') {
    echo "error {$job->error['code']}: {$job->error['message']}\n";
    exit(1);
}
echo "events {$job->result['events']}\n";
echo "text {$job->result['text']}\n";
