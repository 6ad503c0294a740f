"""The client library example of docs/cli.md: submit a job, follow its events, wait for it.

Run it against ``outlast serve --app examples.myapp:app``: ``python examples/client.py``.
"""

import outlast

with outlast.Client() as client:                # $OUTLAST_URL and $OUTLAST_TOKEN, or their defaults
    job = client.submit("summarize", {"text": "..."}, timeout=60, retries=3, key="doc-42")

    for event in client.events(job.id):        # until the job is over
        if event.type == "output":
            print(event.message["data"])
        elif event.type == "event":            # a relay's upstream event
            print(event.event, event.data)

    job = client.wait(job.id)                  # long-polls until terminal
    print(job.state, job.result, job.error)
