<?php

declare(strict_types=1);

namespace Outlast\Tests;

use Outlast\OutlastException;
use Outlast\SseParser;
use PHPUnit\Framework\TestCase;

/**
 * The parser on the same vectors as the Python decoder (web-platform-tests eventsource/format-*
 * and eventsource-parser fixtures; tests/sse/vectors.py names each source), cut as the source
 * fed them, whole, byte by byte, and in two at every byte.
 */
final class SseParserTest extends TestCase
{
    /** @return iterable<string, array{array<string, mixed>}> */
    public static function vectors(): iterable
    {
        $vectors = json_decode((string) file_get_contents(outlast_env('OUTLAST_SSE_VECTORS')), true, 512, JSON_THROW_ON_ERROR);
        foreach ($vectors as $vector) {
            yield $vector['name'] => [$vector];
        }
    }

    /** @dataProvider vectors */
    public function testVector(array $vector): void
    {
        $chunks = array_map('base64_decode', $vector['chunks']);
        $raw = implode('', $chunks);
        $cuts = ['as given' => $chunks, 'whole' => [$raw], 'bytes' => str_split($raw) ?: ['']];
        for ($i = 1; $i < strlen($raw) && $i < 400; $i++) {
            $cuts["split at $i"] = [substr($raw, 0, $i), substr($raw, $i)];
        }
        foreach ($cuts as $how => $pieces) {
            $parser = new SseParser();
            $events = [];
            foreach ($pieces as $piece) {
                foreach ($parser->feed($piece) as $event) {
                    $events[] = [$event->event, $event->data, $event->id];
                }
            }
            $parser->close();
            $this->assertSame($vector['events'], $events, "{$vector['name']}, $how");
            $this->assertSame($vector['retry'], $parser->retry, "{$vector['name']}, $how: retry");
            $this->assertSame($vector['last_event_id'], $parser->lastEventId, "{$vector['name']}, $how: last event id");
        }
    }

    public function testALineOverTheLimitThrowsInsteadOfGrowing(): void
    {
        $parser = new SseParser(maxLineBytes: 1024);
        $this->expectException(OutlastException::class);
        for ($i = 0; $i < 100; $i++) {
            $parser->feed('data: ' . str_repeat('x', 100));
        }
    }

    public function testAnEventOverTheLimitThrows(): void
    {
        $parser = new SseParser(maxLineBytes: 1024, maxEventBytes: 4096);
        $this->expectException(OutlastException::class);
        for ($i = 0; $i < 100; $i++) {
            $parser->feed('data: ' . str_repeat('x', 100) . "\n");
        }
    }

    public function testCommentsAreCountedNotDispatched(): void
    {
        $parser = new SseParser();
        $this->assertSame([], $parser->feed(": ping\n: ping\n"));
        $this->assertSame(2, $parser->comments());
    }
}
