"""A WAN round trip for one TCP link, for scripts/testenv's sites topology: listens on LISTEN, forwards every
connection to TARGET, and holds each chunk half the round trip in each direction, in order. The round trip
(ms) is read from RTT_FILE whenever it changes, so a test sets it without restarting anything. The kernel
here has no netem qdisc; a cut is made in the kernel all the same (nft drops, scripts/testenv.d/sites.bash).

usage: wan.py LISTEN_HOST:PORT TARGET_HOST:PORT RTT_FILE
"""

import asyncio
import os
import sys

half = 0.0


async def watch_rtt(path):
    global half
    seen = None
    while True:
        try:
            stamp = os.stat(path).st_mtime_ns
            if stamp != seen:
                seen = stamp
                with open(path) as f:
                    half = max(0.0, float(f.read().strip() or 0)) / 2000.0
        except (OSError, ValueError):
            half = 0.0
        await asyncio.sleep(0.1)


async def pump(reader, writer):
    loop = asyncio.get_running_loop()
    queue = asyncio.Queue()

    async def deliver():
        while True:
            due, data = await queue.get()
            if data is None:
                break
            wait = due - loop.time()
            if wait > 0:
                await asyncio.sleep(wait)
            writer.write(data)
            await writer.drain()

    sender = asyncio.create_task(deliver())
    try:
        while True:
            data = await reader.read(65536)
            if not data:
                break
            queue.put_nowait((loop.time() + half, data))
    except (ConnectionError, OSError):
        pass
    queue.put_nowait((0, None))
    try:
        await sender
    except (ConnectionError, OSError):
        pass
    try:
        writer.close()
    except OSError:
        pass


async def main():
    listen, target, rtt_file = sys.argv[1:4]
    lhost, lport = listen.rsplit(":", 1)
    thost, tport = target.rsplit(":", 1)
    asyncio.create_task(watch_rtt(rtt_file))

    async def handle(cr, cw):
        try:
            tr, tw = await asyncio.open_connection(thost, int(tport))
        except OSError:
            cw.close()
            return
        await asyncio.gather(pump(cr, tw), pump(tr, cw))

    server = await asyncio.start_server(handle, lhost, int(lport))
    async with server:
        await server.serve_forever()


asyncio.run(main())
