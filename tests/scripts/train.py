"""A stand-in for a user's own training program, for the script-run tests.

The standard library only, nothing from trialdeck: the tests start it with the
system's /usr/bin/python3, as a script from another environment would run. It
reports one JSON line per epoch to $TRIALDECK_METRICS, keeps a checkpoint in
$TRIALDECK_RUN_DIR (report first, then save: a resume re-reports rather than
skips), and resumes from it when TRIALDECK_RESUME=1. Knobs make it fail,
plateau, spawn children, ignore SIGTERM, or score by its learning rate (so a
pruner has something to prune).
"""

import argparse
import json
import math
import os
import subprocess
import sys
import time

parser = argparse.ArgumentParser()
parser.add_argument("--lr", type=float, default=0.01)
parser.add_argument("--epochs", type=int, default=5)
parser.add_argument("--sleep", type=float, default=0.05, help="seconds per epoch")
parser.add_argument("--fail-at", type=int, default=0, help="raise at this epoch")
parser.add_argument("--plateau", type=int, default=0, help="val_loss stops improving after this epoch")
parser.add_argument("--children", default="", help="start two sleeping children carrying this marker")
parser.add_argument("--ignore-term", action="store_true", help="ignore SIGTERM (the engine must SIGKILL)")
parser.add_argument("--chatty", type=int, default=0, help="print this many lines a second to stdout")
args = parser.parse_args()

if args.ignore_term:
    import signal

    signal.signal(signal.SIGTERM, signal.SIG_IGN)

run_dir = os.environ.get("TRIALDECK_RUN_DIR", ".")
metrics = os.environ.get("TRIALDECK_METRICS")
checkpoint = os.path.join(run_dir, "checkpoint.json")
start = 1
if os.environ.get("TRIALDECK_RESUME") == "1" and os.path.exists(checkpoint):
    with open(checkpoint) as f:
        start = json.load(f)["epoch"] + 1
with open(os.path.join(run_dir, "starts.jsonl"), "a") as f:  # what each attempt saw, for the tests
    seen = {k: v for k, v in os.environ.items() if k.startswith("TRIALDECK_") or k == "CUDA_VISIBLE_DEVICES"}
    f.write(json.dumps({"start": start, "pid": os.getpid(), "cwd": os.getcwd(), "argv": sys.argv[1:], "env": seen}) + "\n")

if args.children:
    code = "import time; time.sleep(600)"
    # One child in the script's own process group, one in a session of its own (it left the group:
    # only the run's marker in its environment finds it).
    subprocess.Popen([sys.executable, "-c", code, args.children])
    subprocess.Popen([sys.executable, "-c", code, args.children], start_new_session=True)


def report(**values):
    if metrics:
        with open(metrics, "a") as f:
            f.write(json.dumps(values) + "\n")


for epoch in range(start, args.epochs + 1):
    deadline = time.monotonic() + args.sleep
    if args.chatty:
        n = 0
        while time.monotonic() < deadline:
            n += 1
            print(f"epoch {epoch} step {n}: a chatty training line of about eighty characters, ok")
            time.sleep(1.0 / args.chatty)
    else:
        time.sleep(args.sleep)
    if epoch == args.fail_at:
        print(f"epoch {epoch}: about to fail", flush=True)
        raise ValueError(f"loss diverged at epoch {epoch}")
    # Far from lr = 0.01 is worse at every epoch: what the median pruner compares.
    distance = abs(math.log10(args.lr) + 2)
    best = args.plateau or epoch
    val_loss = distance + 1.0 / min(epoch, best) + (0.01 * (epoch - best) if args.plateau and epoch > best else 0.0)
    report(epoch=epoch, train_loss=distance + 0.9 / epoch, val_loss=val_loss, phase="train")
    print(f"epoch {epoch} val_loss {val_loss:.4f}", flush=True)
    tmp = checkpoint + ".tmp"
    with open(tmp, "w") as f:
        json.dump({"epoch": epoch}, f)
    os.replace(tmp, checkpoint)
print("finished", file=sys.stderr)
