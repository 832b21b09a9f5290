"""The plain-TCP reference of bench/wan.sh (`--systems tcp`): what TCP alone achieves with an
all-reduce's traffic on the same links, with no computation, no framing and no waiting between
the parts and the replies. Started inside its own network namespace; speaks the same line
protocol to bench/wan.py as `averager worker`.

Every round, each peer opens one fresh connection to every other peer (the averager's tcp
transport opens one per call too, so slow start counts alike), and on every connection both ends
send their `bytes / peers` at once and read the other end's: each peer sends and receives
`2(N-1)/N` of its tensor bytes, the volume of the link bound, in 2(N-1) flows per link direction
as the averager's part and reply streams. A peer's round ends when everything it sent was
read by its peer and everything sent to it was read; the driver takes the slowest peer's time.
This is the best case of any TCP transport: the averager can start a reply only once it has the
parts, and its streams carry frames and headers.

    python tcp_wan_peer.py --index 0 --hosts 10.77.0.1,10.77.0.2,10.77.0.3,10.77.0.4 --floats 16777216
"""

import argparse
import queue
import socket
import struct
import sys
import threading
import time

from common import driver_rounds, emit

PORT = 47911
CHUNK = 1 << 20


def pace(conn, bytes_per_second):
    """Caps the kernel's pacing of `conn` (Linux's SO_MAX_PACING_RATE, option 47)."""
    if bytes_per_second:
        conn.setsockopt(socket.SOL_SOCKET, getattr(socket, "SO_MAX_PACING_RATE", 47), bytes_per_second)


def exchange(conn, nbytes, errors):
    """Sends `nbytes` on `conn` while reading the `nbytes` its other end sends; then one byte each
    way, so that both ends know their bytes were read before the round counts as done."""
    def send():
        try:
            payload = memoryview(bytearray(CHUNK))
            left = nbytes
            while left:
                n = min(left, CHUNK)
                conn.sendall(payload[:n])
                left -= n
        except OSError as e:
            errors.append(f"send: {e}")

    sender = threading.Thread(target=send)
    sender.start()
    try:
        buf = memoryview(bytearray(CHUNK))
        left = nbytes
        while left:
            n = conn.recv_into(buf, min(left, CHUNK))
            if n == 0:
                raise OSError("the other end closed early")
            left -= n
        sender.join()
        conn.sendall(b"k")
        if conn.recv(1) != b"k":
            raise OSError("no acknowledgement")
    except OSError as e:
        errors.append(f"receive: {e}")
    finally:
        sender.join()
        conn.close()


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--index", type=int, required=True)
    parser.add_argument("--hosts", required=True, help="every peer's address, comma-separated, in index order")
    parser.add_argument("--floats", type=int, required=True)
    parser.add_argument("--timeout", type=float, default=300.0)
    parser.add_argument("--pace", type=int, default=0,
                        help="cap each connection's sending rate at this many bytes per second "
                        "(SO_MAX_PACING_RATE), as the averager caps its streams; 0: no cap")
    args = parser.parse_args()
    hosts = args.hosts.split(",")
    peers = len(hosts)
    per_connection = args.floats * 4 // peers

    listener = socket.create_server((hosts[args.index], PORT), backlog=64)
    incoming = queue.Queue()

    def accept():
        while True:
            try:
                conn, _ = listener.accept()
            except OSError:
                return
            conn.settimeout(args.timeout)
            try:
                (round_no,) = struct.unpack("!I", conn.recv(4, socket.MSG_WAITALL))
            except (OSError, struct.error):
                conn.close()
                continue
            incoming.put((round_no, conn))

    threading.Thread(target=accept, daemon=True).start()
    emit({"event": "ready", "dht": []})
    for round_no in driver_rounds(sys.stdin):
        report = {"event": "round", "round": round_no, "error": None}
        errors, threads = [], []
        start = time.perf_counter()
        try:
            for j, host in enumerate(hosts):
                if j == args.index:
                    continue
                conn = None
                deadline = time.monotonic() + 30
                while conn is None:
                    try:
                        conn = socket.create_connection((host, PORT), timeout=args.timeout)
                    except OSError:
                        # That peer's listener is not up yet (its worker is still starting).
                        if time.monotonic() > deadline:
                            raise
                        time.sleep(0.01)
                pace(conn, args.pace)
                conn.sendall(struct.pack("!I", round_no))
                threads.append(threading.Thread(target=exchange, args=(conn, per_connection, errors)))
                threads[-1].start()
            for _ in range(peers - 1):
                got, conn = incoming.get(timeout=args.timeout)
                if got != round_no:
                    raise OSError(f"a connection of round {got} during round {round_no}")
                pace(conn, args.pace)
                threads.append(threading.Thread(target=exchange, args=(conn, per_connection, errors)))
                threads[-1].start()
            for t in threads:
                t.join()
            elapsed = time.perf_counter() - start
        except (OSError, queue.Empty) as e:
            errors.append(str(e) or type(e).__name__)
        if errors:
            report["error"] = "; ".join(errors)
        else:
            report["allreduce_s"] = elapsed
            report["matchmaking_s"] = 0.0
        emit(report)
    listener.close()


if __name__ == "__main__":
    sys.exit(main())
