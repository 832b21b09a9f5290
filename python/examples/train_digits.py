"""Four processes train a small torch model on scikit-learn's digits, each on its own shard,
averaging parameters every few steps (and at the end of each epoch, before evaluating) through
averager.DecentralizedAverager (Kademlia DHT + gRPC on 127.0.0.1). A fifth run trains the same model on all the data in one process. Prints
both final test accuracies and saves a plot of the curves.

    pip install ./python scikit-learn matplotlib torch
    python python/examples/train_digits.py --out digits.png

Nothing is downloaded: load_digits ships inside scikit-learn.
"""

import argparse
import json
import os
import subprocess
import sys
import time

import numpy as np
import torch
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split


def data(seed=0):
    x, y = load_digits(return_X_y=True)
    x = (x / 16.0).astype(np.float32)
    x_tr, x_te, y_tr, y_te = train_test_split(x, y, test_size=0.25, random_state=seed, stratify=y)
    t = lambda a, d: torch.tensor(a, dtype=d)  # noqa: E731
    return t(x_tr, torch.float32), t(y_tr, torch.long), t(x_te, torch.float32), t(y_te, torch.long)


def model(seed):
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(64, 64), torch.nn.ReLU(), torch.nn.Linear(64, 10))


def accuracy(net, x, y):
    with torch.no_grad():
        return float((net(x).argmax(1) == y).float().mean())


def train(net, x, y, x_te, y_te, epochs, batch, after_step=None, before_eval=None, seed=0):
    """Plain SGD with momentum; returns the test accuracy after each epoch."""
    opt = torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9)
    gen = torch.Generator().manual_seed(seed)
    curve, step = [], 0
    for _ in range(epochs):
        for idx in torch.randperm(len(x), generator=gen).split(batch):
            opt.zero_grad()
            torch.nn.functional.cross_entropy(net(x[idx]), y[idx]).backward()
            opt.step()
            step += 1
            if after_step is not None:
                after_step(step)
        if before_eval is not None:
            before_eval()
        curve.append(accuracy(net, x_te, y_te))
    return curve


def peer(args):
    """One of the averaging processes (started by main with --peer)."""
    import averager

    x, y, x_te, y_te = data()
    shard = slice(args.rank, None, args.peers)
    net = model(seed=args.rank)  # different initialisations: the first average merges them
    params = [p.data for p in net.parameters()]
    with averager.DHT(initial_peers=[args.bootstrap], host_maddrs=["/ip4/127.0.0.1/tcp/0"], start=True) as dht:
        avg = averager.DecentralizedAverager(
            params, dht, start=True, prefix="digits", target_group_size=args.peers,
            min_group_size=args.peers, min_matchmaking_time=1.0, request_timeout=0.5,
        )
        rounds = {"ok": 0, "failed": 0}

        def average():
            ok = avg.step(timeout=60) is not None  # the parameters are averaged in place
            rounds["ok" if ok else "failed"] += 1

        def after_step(step):
            if step % args.every == 0:
                average()

        average()  # start from one common model
        # Every epoch ends with a round too, so each peer evaluates the swarm's averaged model.
        curve = train(net, x[shard], y[shard], x_te, y_te, args.epochs, args.batch, after_step, average,
                      seed=args.rank)
        avg.shutdown()
    print(json.dumps({"rank": args.rank, "curve": curve, "rounds": rounds}), flush=True)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--peers", type=int, default=4)
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--every", type=int, default=4, help="average parameters every this many local steps")
    parser.add_argument("--out", default="digits.png", help="where to save the plot")
    parser.add_argument("--peer", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--rank", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--bootstrap", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.peer:
        return peer(args)

    import averager

    torch.set_num_threads(1)
    x, y, x_te, y_te = data()
    start = time.time()
    single = train(model(seed=0), x, y, x_te, y_te, args.epochs, args.batch)
    print(f"one process, all {len(x)} training samples: test accuracy {single[-1]:.4f}", flush=True)

    with averager.DHT(host_maddrs=["/ip4/127.0.0.1/tcp/0"], start=True) as bootstrap:
        address = bootstrap.get_visible_maddrs()[0]
        common = [sys.executable, os.path.abspath(__file__), "--peer", "--bootstrap", address,
                  "--peers", str(args.peers), "--epochs", str(args.epochs), "--batch", str(args.batch),
                  "--every", str(args.every)]
        env = dict(os.environ, OMP_NUM_THREADS="1")
        procs = [subprocess.Popen(common + ["--rank", str(r)], stdout=subprocess.PIPE, text=True, env=env)
                 for r in range(args.peers)]
        results = []
        for p in procs:
            out, _ = p.communicate()
            if p.returncode != 0:
                raise SystemExit(f"peer failed with exit code {p.returncode}")
            results.append(json.loads(out.strip().splitlines()[-1]))
    for r in results:
        print(f"peer {r['rank']} ({len(x) // args.peers} samples, averaging every {args.every} steps): "
              f"test accuracy {r['curve'][-1]:.4f}, rounds {r['rounds']}")
    print(f"total time {time.time() - start:.1f} s")

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    epochs = range(1, args.epochs + 1)
    plt.figure(figsize=(7, 4.5))
    plt.plot(epochs, single, "k-", linewidth=2, label="1 process, all data")
    for r in results:
        plt.plot(epochs, r["curve"], "--", label=f"peer {r['rank']}, 1/{args.peers} of the data + averaging")
    plt.xlabel("epoch (one pass over the process's own data)")
    plt.ylabel("test accuracy")
    plt.title("digits: decentralized averaging vs one process")
    plt.ylim(0.5, 1.0)
    plt.grid(alpha=0.3)
    plt.legend(loc="lower right")
    plt.tight_layout()
    plt.savefig(args.out, dpi=120)
    print(f"plot saved to {args.out}")


if __name__ == "__main__":
    main()
