<?php
// Ask an LLM through outlast and print the answer as it streams in, then stop reading after a
// few events, as a PHP request cut by max_execution_time or a closed browser would. outlast
// reads the upstream to its end anyway and keeps the whole answer: fetch_result.php gets it.
//
//   php submit_and_stream.php [MAX_EVENTS]
//
// Environment: OUTLAST_URL (default http://127.0.0.1:8787), OUTLAST_TOKEN (a bearer token, when
// outlast has tokens configured), OUTLAST_UPSTREAM (the upstream's name in outlast.toml, default
// "llm"), OUTLAST_MODEL (default "gpt-4o-mini").
//
// The request is the OpenAI chat completions request, sent to outlast's pass-through
// /v1/upstreams/<name>/v1/chat/completions: outlast adds the API key from its config, so this
// script never holds it. The answer is the upstream's own event stream; its header
// Outlast-Job-Id names the job that keeps the whole answer.

$base = rtrim(getenv('OUTLAST_URL') ?: 'http://127.0.0.1:8787', '/');
$upstream = getenv('OUTLAST_UPSTREAM') ?: 'llm';
$maxEvents = max(1, (int) ($argv[1] ?? 3));

$request = [
    'model' => getenv('OUTLAST_MODEL') ?: 'gpt-4o-mini',
    'messages' => [['role' => 'user', 'content' => 'Explain durable streams in one paragraph.']],
    'stream' => true,
];
$headers = [
    'Content-Type: application/json',
    'Accept: text/event-stream',
    // Sending the same request again with this key gets the same job, never a second LLM call.
    'Idempotency-Key: ' . bin2hex(random_bytes(16)),
];
$token = getenv('OUTLAST_TOKEN');
if ($token) {
    $headers[] = "Authorization: Bearer $token";
}

$jobId = null;
$buffer = '';
$events = 0;

// One event's data lines, joined as the SSE rules say (exactly one space after the colon is
// dropped; comment lines such as outlast's ": ping" keepalives are ignored).
function event_data(string $block): ?string
{
    $data = null;
    foreach (preg_split('/\r\n|\r|\n/', $block) as $line) {
        if (strncmp($line, 'data:', 5) !== 0) {
            continue;
        }
        $value = substr($line, 5);
        if (substr($value, 0, 1) === ' ') {
            $value = substr($value, 1);
        }
        $data = $data === null ? $value : "$data\n$value";
    }
    return $data;
}

$ch = curl_init("$base/v1/upstreams/$upstream/v1/chat/completions");
curl_setopt_array($ch, [
    CURLOPT_POST => true,
    CURLOPT_POSTFIELDS => json_encode($request),
    CURLOPT_HTTPHEADER => $headers,
    CURLOPT_HEADERFUNCTION => function ($ch, string $line) use (&$jobId): int {
        if (preg_match('/^outlast-job-id:\s*(\S+)/i', $line, $m)) {
            $jobId = $m[1];
            echo "job $jobId\n";
        }
        return strlen($line);
    },
    CURLOPT_WRITEFUNCTION => function ($ch, string $chunk) use (&$buffer, &$events, $maxEvents): int {
        if (curl_getinfo($ch, CURLINFO_RESPONSE_CODE) !== 200) {
            $buffer .= $chunk;  // an error answer: keep it for the message below
            return strlen($chunk);
        }
        $buffer .= $chunk;
        // outlast ends every event with a blank line ("\n\n").
        while (($end = strpos($buffer, "\n\n")) !== false) {
            $data = event_data(substr($buffer, 0, $end));
            $buffer = substr($buffer, $end + 2);
            if ($data === null || $data === '[DONE]') {
                continue;
            }
            $chunkJson = json_decode($data, true);
            echo $chunkJson['choices'][0]['delta']['content'] ?? '';
            flush();
            $events += 1;
            if ($events >= $maxEvents) {
                return 0;  // stop reading: curl aborts the transfer
            }
        }
        return strlen($chunk);
    },
]);

$ok = curl_exec($ch);
$status = curl_getinfo($ch, CURLINFO_RESPONSE_CODE);
$errno = curl_errno($ch);
curl_close($ch);

if ($status !== 200) {
    fwrite(STDERR, "outlast answered $status: $buffer\n");
    exit(1);
}
if (!$ok && $errno !== CURLE_WRITE_ERROR) {
    fwrite(STDERR, "the request failed: curl error $errno\n");
    exit(1);
}
echo "\n";
if ($errno === CURLE_WRITE_ERROR) {
    echo "stopped reading after $events events; outlast finishes job $jobId\n";
    echo "fetch the whole answer with: php fetch_result.php $jobId\n";
}
