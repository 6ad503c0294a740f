<?php
// Fetch a job's outcome from outlast, waiting for it to finish: for a relay, the whole text of
// the answer, however early the script that asked for it stopped reading.
//
//   php fetch_result.php JOB_ID
//
// Environment: OUTLAST_URL (default http://127.0.0.1:8787), OUTLAST_TOKEN (when tokens are on).

$base = rtrim(getenv('OUTLAST_URL') ?: 'http://127.0.0.1:8787', '/');
$jobId = $argv[1] ?? '';
if (!preg_match('/^job_[a-z0-9]+$/', $jobId)) {
    fwrite(STDERR, "usage: php fetch_result.php JOB_ID\n");
    exit(2);
}
$headers = ['Accept: application/json'];
$token = getenv('OUTLAST_TOKEN');
if ($token) {
    $headers[] = "Authorization: Bearer $token";
}

// ?wait= long-polls until the job is finished (the server caps one wait; ask again if needed).
$terminal = ['succeeded', 'failed', 'cancelled'];
for ($try = 0; $try < 10; $try++) {
    $ch = curl_init("$base/v1/jobs/$jobId?wait=60");
    curl_setopt_array($ch, [
        CURLOPT_HTTPHEADER => $headers,
        CURLOPT_RETURNTRANSFER => true,
        CURLOPT_TIMEOUT => 90,
    ]);
    $body = curl_exec($ch);
    $status = curl_getinfo($ch, CURLINFO_RESPONSE_CODE);
    curl_close($ch);
    if ($status !== 200) {
        fwrite(STDERR, "outlast answered $status: $body\n");
        exit(1);
    }
    $job = json_decode($body, true);
    if (in_array($job['state'], $terminal, true)) {
        break;
    }
}

echo "state {$job['state']}\n";
if ($job['state'] !== 'succeeded') {
    $error = $job['error'] ?? [];
    echo 'error ' . ($error['code'] ?? '?') . ': ' . ($error['message'] ?? '') . "\n";
    exit(1);
}
$result = $job['result'];
if (isset($result['text'])) {
    echo "events {$result['events']}\n";
    echo "text {$result['text']}\n";
} else {
    echo 'result ' . json_encode($result) . "\n";
}
