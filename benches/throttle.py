#!/usr/bin/env python3
"""A TCP proxy on loopback limiting the bandwidth of everything through it, for
benches/remote.sh: a CI-like link (e.g. 100 MB/s) without `tc` (which would slow every
program on the machine using loopback).

    throttle.py LISTEN_PORT TARGET_HOST:TARGET_PORT MBYTES_PER_SECOND

One token bucket per direction, shared by all connections (a link, not a per-connection
limit), refilled continuously, with a burst of 64 KiB. Prints "ready" once listening."""

import asyncio
import sys
import time

CHUNK = 64 * 1024


class Bucket:
    def __init__(self, rate):
        self.rate = rate
        self.tokens = 0.0
        self.last = time.monotonic()
        self.lock = asyncio.Lock()

    async def take(self, n):
        async with self.lock:
            while True:
                now = time.monotonic()
                self.tokens = min(CHUNK, self.tokens + (now - self.last) * self.rate)
                self.last = now
                if self.tokens >= n:
                    self.tokens -= n
                    return
                await asyncio.sleep((n - self.tokens) / self.rate)


async def pipe(reader, writer, bucket):
    try:
        while True:
            data = await reader.read(CHUNK)
            if not data:
                break
            await bucket.take(len(data))
            writer.write(data)
            await writer.drain()
    except (ConnectionError, asyncio.IncompleteReadError):
        pass
    finally:
        try:
            writer.close()
        except Exception:
            pass


async def main():
    port, target, rate = int(sys.argv[1]), sys.argv[2], float(sys.argv[3]) * 1e6
    host, tport = target.rsplit(":", 1)
    up, down = Bucket(rate), Bucket(rate)

    async def handle(cr, cw):
        try:
            sr, sw = await asyncio.open_connection(host, int(tport))
        except OSError:
            cw.close()
            return
        await asyncio.gather(pipe(cr, sw, up), pipe(sr, cw, down))

    server = await asyncio.start_server(handle, "127.0.0.1", port)
    print("ready", flush=True)
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    asyncio.run(main())
