<?php

declare(strict_types=1);

namespace Outlast\Tests;

use Outlast\AuthException;
use Outlast\Client;
use Outlast\ConnectionException;
use Outlast\Event;
use Outlast\OutlastException;
use Outlast\QueueFullException;
use PHPUnit\Framework\TestCase;

/** The client against a live outlast (started by tests/clients/test_php_client.py). */
final class ClientTest extends TestCase
{
    private Client $outlast;

    protected function setUp(): void
    {
        $this->outlast = new Client(outlast_env('OUTLAST_URL'));
    }

    private function gate(): string
    {
        return outlast_env('OUTLAST_GATE_DIR') . '/gate-' . bin2hex(random_bytes(8));
    }

    public function testSubmitThenWaitGivesTheResult(): void
    {
        $job = $this->outlast->submit('count', ['n' => 3]);
        $this->assertStringStartsWith('job_', $job->id);
        $this->assertContains($job->state, ['queued', 'running', 'succeeded']);
        $done = $this->outlast->wait($job->id, timeout: 30);
        $this->assertSame('succeeded', $done->state);
        $this->assertSame(['n' => 3], $done->result);
        $this->assertNull($done->error);
        $this->assertTrue($done->isTerminal());
    }

    public function testWaitReturnsTheJobAsItIsWhenTimeRunsOut(): void
    {
        $job = $this->outlast->submit('block', ['gate' => $this->gate()]);
        $still = $this->outlast->wait($job->id, timeout: 0.3);
        $this->assertContains($still->state, ['queued', 'running']);
        $this->outlast->cancel($job->id);
        $this->assertSame('cancelled', $this->outlast->wait($job->id, timeout: 30)->state);
    }

    public function testTheSameKeyGetsTheSameJob(): void
    {
        $key = 'php-test-' . bin2hex(random_bytes(8));
        $first = $this->outlast->submit('count', ['n' => 1], ['key' => $key]);
        $again = $this->outlast->submit('count', ['n' => 1], ['key' => $key]);
        $this->assertSame($first->id, $again->id);
        try {
            $this->outlast->submit('count', ['n' => 2], ['key' => $key]);
            $this->fail('a key reused with another input must be refused');
        } catch (OutlastException $e) {
            $this->assertSame(409, $e->status);
        }
    }

    public function testSubmitRetriesA503WithTheSameGeneratedKey(): void
    {
        // A stand-in for outlast while it restarts: PHP's built-in server answers the first
        // submit 503 (Retry-After: 0) and the second 202, and records what each carried.
        $dir = sys_get_temp_dir() . '/outlast-php-' . bin2hex(random_bytes(6));
        mkdir($dir);
        file_put_contents("$dir/router.php", <<<'PHP'
            <?php
            $log = __DIR__ . '/requests.jsonl';
            $body = json_decode(file_get_contents('php://input'), true);
            file_put_contents($log, json_encode($body) . "\n", FILE_APPEND);
            header('Content-Type: application/json');
            if (count(file($log)) === 1) {
                http_response_code(503);
                header('Retry-After: 0');
                echo json_encode(['error' => ['code' => 'draining', 'message' => 'shutting down']]);
            } else {
                http_response_code(202);
                echo json_encode(['id' => 'job_stub', 'task' => $body['task'], 'state' => 'queued']);
            }
            PHP);
        $port = self::freePort();
        $server = proc_open([PHP_BINARY, '-S', "127.0.0.1:$port", "$dir/router.php"], [1 => ['file', '/dev/null', 'w'], 2 => ['file', '/dev/null', 'w']], $pipes);
        try {
            $client = new Client("http://127.0.0.1:$port", retries: 3);
            $deadline = microtime(true) + 10;
            while (true) { // until the stand-in listens
                $socket = @fsockopen('127.0.0.1', $port, $errno, $errstr, 0.2);
                if ($socket !== false) {
                    fclose($socket);
                    break;
                }
                $this->assertLessThan($deadline, microtime(true), 'the stand-in server did not start');
                usleep(20_000);
            }
            $job = $client->submit('count', ['n' => 1]);
            $this->assertSame('job_stub', $job->id);
            $requests = array_map('json_decode', file("$dir/requests.jsonl"));
            $this->assertCount(2, $requests);
            $this->assertStringStartsWith('php-', $requests[0]->key);
            $this->assertSame($requests[0]->key, $requests[1]->key);
        } finally {
            proc_terminate($server);
            proc_close($server);
            array_map('unlink', glob("$dir/*"));
            rmdir($dir);
        }
    }

    private static function freePort(): int
    {
        $socket = stream_socket_server('tcp://127.0.0.1:0');
        $name = stream_socket_get_name($socket, false);
        fclose($socket);
        return (int) substr($name, strrpos($name, ':') + 1);
    }

    public function testAnUnknownTaskIsRefusedWithTheFieldNamed(): void
    {
        try {
            $this->outlast->submit('no-such-task');
            $this->fail('an unknown task must be refused');
        } catch (OutlastException $e) {
            $this->assertSame(422, $e->status);
            $this->assertStringContainsString('task', $e->getMessage());
        }
    }

    public function testUnknownOptionsAreRefusedBeforeAnyRequest(): void
    {
        $this->expectException(\InvalidArgumentException::class);
        $this->outlast->submit('count', [], ['qeueu' => 'default']);
    }

    public function testCancelStopsARunningJob(): void
    {
        $job = $this->outlast->submit('block', ['gate' => $this->gate()]);
        $cancelled = $this->outlast->cancel($job->id);
        $this->assertContains($cancelled->state, ['running', 'queued', 'cancelled']);
        $final = $this->outlast->wait($job->id, timeout: 30);
        $this->assertSame('cancelled', $final->state);
        $this->assertSame('cancelled', $final->error['code'] ?? null);
        // Idempotent.
        $this->assertSame('cancelled', $this->outlast->cancel($job->id)->state);
    }

    public function testAFullQueueRaisesQueueFullWithRetryAfter(): void
    {
        $gate = $this->gate();
        $held = [];
        try {
            // Queue "small": one running, one waiting; the next is refused.
            $caught = null;
            for ($i = 0; $i < 3 && $caught === null; $i++) {
                try {
                    $held[] = $this->outlast->submit('block', ['gate' => $gate], ['queue' => 'small']);
                } catch (QueueFullException $e) {
                    $caught = $e;
                }
            }
            $this->assertNotNull($caught, 'the third job must be refused');
            $this->assertSame(429, $caught->status);
            $this->assertSame('queue_full', $caught->errorCode);
            $this->assertGreaterThan(0, $caught->retryAfter);
        } finally {
            foreach ($held as $job) {
                $this->outlast->cancel($job->id);
            }
        }
    }

    public function testListPagesNewestFirst(): void
    {
        $a = $this->outlast->submit('count', ['n' => 1]);
        $b = $this->outlast->submit('count', ['n' => 1]);
        $page = $this->outlast->list(['task' => 'count', 'limit' => 1]);
        $this->assertCount(1, $page['jobs']);
        $this->assertSame($b->id, $page['jobs'][0]->id);
        $this->assertNotNull($page['next']);
        $next = $this->outlast->list(['task' => 'count', 'limit' => 1, 'cursor' => $page['next']]);
        $this->assertSame($a->id, $next['jobs'][0]->id);
    }

    public function testEventsFollowLiveAndResumeAfterADropWithoutGapOrDuplicate(): void
    {
        $gate = $this->gate();
        $job = $this->outlast->submit('steps', ['gate' => $gate, 'n' => 3]);
        $seen = [];
        $last = null;
        foreach ($this->outlast->events($job->id) as $event) {
            $this->assertInstanceOf(Event::class, $event);
            $message = $event->json();
            if (($message['type'] ?? null) === 'output') {
                $seen[] = $message['data']['step'];
                $last = $event->id;
            }
            if (count($seen) === 3) {
                break; // the connection is dropped here, mid-job
            }
        }
        $this->assertSame([0, 1, 2], $seen);
        touch($gate);
        $types = [];
        foreach ($this->outlast->events($job->id, after: $last) as $event) {
            $message = $event->json();
            $types[] = $event->event;
            if (($message['type'] ?? null) === 'output') {
                $seen[] = $message['data']['step'];
            }
        }
        $this->assertSame([0, 1, 2, 3, 4, 5], $seen);
        $this->assertContains('outlast.result', $types);
        $this->assertSame('succeeded', $this->outlast->job($job->id)->state);
        // After the end, following again gives nothing more (outlast answers 204).
        $this->assertSame([], iterator_to_array($this->outlast->events($job->id, after: $event->id), false));
    }

    public function testChatKnowsTheJobAtOnceAndTheJobFinishesAfterTheClientLeaves(): void
    {
        $stream = $this->outlast->chat('fake', [
            'model' => 'fake-model',
            'messages' => [['role' => 'user', 'content' => 'hello']],
        ]);
        $this->assertStringStartsWith('job_', $stream->jobId);
        $chunks = 0;
        foreach ($stream as $chunk) {
            $this->assertSame('chat.completion.chunk', $chunk['object']);
            if (++$chunks === 3) {
                break; // abandon the answer mid-way
            }
        }
        $partial = $stream->text();
        $this->assertNotSame('', $partial);
        $job = $this->outlast->wait($stream->jobId, timeout: 60);
        $this->assertSame('succeeded', $job->state);
        $full = outlast_env('OUTLAST_FAKE_TEXT');
        $this->assertSame($full, $job->result['text']);
        $this->assertStringStartsWith($partial, $full);
        $this->assertNotSame($full, $partial);
    }

    public function testChatIteratedToTheEndGivesTheWholeText(): void
    {
        $stream = $this->outlast->chat('fake', ['model' => 'm', 'messages' => [['role' => 'user', 'content' => 'hi']]]);
        foreach ($stream as $_) {
        }
        $this->assertSame(outlast_env('OUTLAST_FAKE_TEXT'), $stream->text());
    }

    public function testStreamsAppendAndRead(): void
    {
        $name = 'php-' . bin2hex(random_bytes(6));
        $this->outlast->createStream($name);
        $this->outlast->append($name, ['n' => 1]);
        $next = $this->outlast->append($name, ['n' => 2]);
        $read = $this->outlast->read($name);
        $this->assertSame([['n' => 1], ['n' => 2]], json_decode($read['data'], true));
        $this->assertSame($next, $read['next']);
        $this->assertTrue($read['upToDate']);
        $this->assertSame('[]', $this->outlast->read($name, $next)['data']);
    }

    public function testAnUnknownJobIsNotFound(): void
    {
        try {
            $this->outlast->job('job_does_not_exist');
            $this->fail('an unknown job must raise');
        } catch (OutlastException $e) {
            $this->assertSame(404, $e->status);
        }
    }

    public function testNobodyListeningIsAConnectionError(): void
    {
        $nobody = new Client('http://127.0.0.1:9', retries: 1);
        $this->expectException(ConnectionException::class);
        $nobody->submit('count');
    }

    public function testTokensOnNeedAToken(): void
    {
        $url = outlast_env('OUTLAST_AUTH_URL');
        try {
            (new Client($url))->submit('count', ['n' => 1]);
            $this->fail('a submit without a token must be refused when tokens are on');
        } catch (AuthException $e) {
            $this->assertSame(401, $e->status);
        }
        try {
            (new Client($url, token: 'wrong'))->job('job_x');
            $this->fail('a wrong token must be refused');
        } catch (AuthException $e) {
            $this->assertSame(401, $e->status);
        }
        $client = new Client($url, token: outlast_env('OUTLAST_AUTH_TOKEN'));
        $job = $client->submit('count', ['n' => 2]);
        $this->assertSame(['n' => 2], $client->wait($job->id, timeout: 30)->result);
        $outputs = 0;
        foreach ($client->events($job->id) as $event) {
            $outputs += ($event->json()['type'] ?? null) === 'output' ? 1 : 0;
        }
        $this->assertSame(2, $outputs);
    }
}
