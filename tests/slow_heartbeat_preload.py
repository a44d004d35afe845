"""Dask scheduler preload for tests: every worker heartbeat is answered 0.4 s late, as a busy scheduler does.

With heartbeats every 0.5 s, most of a worker's time is then spent with a
heartbeat in flight, so a shutdown that closes a worker's connections under
it (distributed's Worker.close does) logs "Failed to communicate with
scheduler during heartbeat" with a traceback nearly every time.  Loaded with
``DASK_DISTRIBUTED__SCHEDULER__PRELOAD='["<this file>"]'``.
"""

import asyncio


def dask_setup(scheduler):
    answer = scheduler.handlers["heartbeat_worker"]

    async def late(*args, **kwargs):
        await asyncio.sleep(0.4)
        return answer(*args, **kwargs)

    scheduler.handlers["heartbeat_worker"] = late
