"""A tiny training script that knows nothing of trialdeck, beyond three environment variables.

The example script preset `examples/script` runs it (its workdir names this folder), and
bench/bench_script.py runs it as a chatty script. The standard library only, so any python3
runs it: a least-squares fit of y = 3x + 1 by gradient descent, one JSON line per epoch
appended to $TRIALDECK_METRICS, a checkpoint in $TRIALDECK_RUN_DIR, and a resume from it when
TRIALDECK_RESUME=1. By hand (`python3 train.py`) it trains and writes its checkpoint here.
"""

import argparse
import json
import os
import random
import time

parser = argparse.ArgumentParser()
parser.add_argument("--lr", type=float, default=0.05)
parser.add_argument("--epochs", type=int, default=20)
parser.add_argument("--sleep", type=float, default=0.2, help="seconds per epoch (it is a demo)")
parser.add_argument("--chatty", type=int, default=0, help="also print this many lines a second")
parser.add_argument("--chatty-metrics", action="store_true",
                    help="the chatty lines hold metrics (`| epoch 3 | step 120 | loss 0.4321 | lr 5.00e-02 |`)")
args = parser.parse_args()

# Resume: where the run keeps its files, and whether it is resuming.
checkpoint = os.path.join(os.environ.get("TRIALDECK_RUN_DIR", "."), "checkpoint.json")
state = {"epoch": 0, "w": 0.0, "b": 0.0}
if os.environ.get("TRIALDECK_RESUME") == "1" and os.path.exists(checkpoint):
    with open(checkpoint) as f:
        state = json.load(f)

rng = random.Random(0)
xs = [rng.uniform(-1, 1) for _ in range(256)]
data = [(x, 3 * x + 1 + rng.gauss(0, 0.1)) for x in xs]
train, val = data[:200], data[200:]


def mse(w, b, rows):
    return sum((w * x + b - y) ** 2 for x, y in rows) / len(rows)


for epoch in range(state["epoch"] + 1, args.epochs + 1):
    start = time.monotonic()
    w, b = state["w"], state["b"]
    for x, y in train:
        err = w * x + b - y
        w, b = w - args.lr * err * x, b - args.lr * err
    state.update(epoch=epoch, w=w, b=b)
    printed = 0
    while time.monotonic() - start < args.sleep:
        if args.chatty:  # in bursts, keeping up with `chatty` lines a second, as a loop printing per step
            due = int(args.chatty * (time.monotonic() - start))
            for i in range(printed, due):
                if args.chatty_metrics:
                    print(f"| epoch {epoch} | step {i} | loss {mse(w, b, train[:2]):.4f} | lr {args.lr:.2e} | a chatty line")
                else:
                    print(f"epoch {epoch}: w {w:.4f} b {b:.4f} (a chatty line, as some training loops print per step)")
            printed = max(printed, due)
            time.sleep(0.005)
        else:
            time.sleep(args.sleep)
    # Report: one JSON line per epoch (what trialdeck.engine.report does for you).
    if os.environ.get("TRIALDECK_METRICS"):
        with open(os.environ["TRIALDECK_METRICS"], "a") as f:
            f.write(json.dumps({"epoch": epoch, "train_loss": mse(w, b, train), "val_loss": mse(w, b, val)}) + "\n")
    # Then save the checkpoint (atomically): a resume never skips a reported epoch.
    with open(checkpoint + ".tmp", "w") as f:
        json.dump(state, f)
    os.replace(checkpoint + ".tmp", checkpoint)
    print(f"epoch {epoch}: val_loss {mse(w, b, val):.5f}", flush=True)
