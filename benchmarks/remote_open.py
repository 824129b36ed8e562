"""Opening many files over ``root://``: one after another (a plain ``uproot.open`` loop, the reference, and
the engine before open_readers) and with ``open_readers`` (16 at once), on a real ``xrootd`` on 127.0.0.1
reached through a proxy that delays every segment, as a grid storage element far away would.

    python benchmarks/remote_open.py                  # 48 files, 20 ms round trip (10 ms each way)
    python benchmarks/remote_open.py --rtt 100 --files 96

Needs ``xrootd`` (Debian ``xrootd-server``) and the XRootD Python client. Prints seconds and files/s.
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import sys
import threading
import time
from pathlib import Path

from _examples import DATA, dataset

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))


def delaying_proxy(target_port: int, one_way: float) -> int:
    """A TCP proxy on 127.0.0.1 (its port returned) that holds every segment ``one_way`` seconds."""
    loop = asyncio.new_event_loop()

    async def pipe(reader, writer):
        try:
            while data := await reader.read(1 << 16):
                await asyncio.sleep(one_way)
                writer.write(data)
                await writer.drain()
        except OSError:
            pass
        finally:
            writer.close()

    async def handle(reader, writer):
        server_reader, server_writer = await asyncio.open_connection("127.0.0.1", target_port)
        asyncio.ensure_future(pipe(reader, server_writer))
        asyncio.ensure_future(pipe(server_reader, writer))

    server = loop.run_until_complete(asyncio.start_server(handle, "127.0.0.1", 0))
    threading.Thread(target=loop.run_forever, daemon=True).start()
    return server.sockets[0].getsockname()[1]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--files", type=int, default=48)
    ap.add_argument("--rtt", type=float, default=20.0, help="added round-trip time, ms")
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()

    import uproot
    from servers import xrootd_server

    from mlaas4hep_lab.data.reader import TreeReader, open_readers

    source = Path(dataset("higgs", 100_000)["files"][0])
    folder = DATA / "remote_open"
    folder.mkdir(exist_ok=True)
    names = [f"f{i:03d}.root" for i in range(args.files)]
    for name in names:
        if not (folder / name).exists():
            shutil.copy(source, folder / name)
    with xrootd_server(folder) as base:
        port = delaying_proxy(int(base.rstrip("/").rsplit(":", 1)[1]), args.rtt / 2000)
        urls = [f"root://127.0.0.1:{port}//{name}" for name in names]
        TreeReader(urls[0], "events").close()   # the XRootD client's start-up, out of the measurement
        rows = {"uproot.open, one after another (reference)": [], "TreeReader, one after another": [],
                "open_readers (16 at once)": []}
        for _ in range(args.repeat):
            for label in rows:
                t0 = time.perf_counter()
                if label.startswith("uproot"):
                    opened = [uproot.open(url) for url in urls]
                    trees = [f["events"] for f in opened]   # noqa: F841  (the tree's metadata read, as we do)
                elif label.startswith("TreeReader"):
                    opened = [TreeReader(url, "events") for url in urls]
                else:
                    opened = open_readers(urls, "events")
                rows[label].append(time.perf_counter() - t0)
                for f in opened:
                    f.close()
    print(f"{args.files} files over root:// (xrootd on 127.0.0.1), {args.rtt:.0f} ms added per round trip; "
          f"best of {args.repeat}")
    for label, seconds in rows.items():
        best = min(seconds)
        print(f"  {label:45} {best:7.2f} s  {args.files / best:8.1f} files/s")


if __name__ == "__main__":
    main()
