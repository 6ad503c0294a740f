"""The tasks of the README and docs/jobs.md and docs/cli.md: serve them from the repository's
root with ``outlast serve --app examples.myapp:app`` (or ``scripts/serve --app
examples.myapp:app``). tests/test_examples.py runs the documented commands against them.
"""

import asyncio

import outlast

app = outlast.App()


@app.task(timeout=60, retries=3, queue="default")
async def summarize(job: outlast.Job, text: str, max_words: int = 100) -> dict:
    await job.emit({"progress": 0.5})          # appended to the job's stream
    return {"summary": " ".join(text.split()[:max_words])}


@app.task(timeout=600, retries=0)
def render(job: outlast.Job, pages: list[int]) -> dict:
    # A plain `def` runs in a bounded thread pool.
    for page in pages:
        if job.cancelled:                     # cancel, timeout or shutdown
            return {"stopped_at": page}
        job.emit({"page": page})              # from a thread: returns once stored
    return {"pages": len(pages)}


@app.task(retries=0)
async def count(job: outlast.Job, n: int = 3, text: str | None = None) -> dict:
    """Emits each word of ``text`` (or ``{"i": i}`` ``n`` times), then says how many."""
    if text is not None:
        for word in text.split():
            await job.emit(word)
        return {"words": len(text.split())}
    for i in range(n):
        await job.emit({"i": i})
    return {"n": n}


@app.task(timeout=120, retries=2)
async def report(job: outlast.Job, pages: int = 5) -> dict:
    """A slow piece of work (a report of ``pages`` pages, 0.2 s each) that outlast finishes
    whatever happens to the request that asked for it."""
    for page in range(1, pages + 1):
        await asyncio.sleep(0.2)                # the slow part
        await job.emit({"page": page, "of": pages})
    return {"pages": pages}
