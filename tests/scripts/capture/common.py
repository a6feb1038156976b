"""What the capture test programs share: their arguments and the losses they print or log.

Standard library only, and nothing from trialdeck: each program here stands for a well-known
training program's output form, run as it is. `val_loss(lr, epoch)` is best at lr 0.01 and
improves each epoch until `--plateau`, then gets worse (for early stopping); `--gate FILE`
makes the program wait, after printing the first line of epoch `--gate-after` + 1, until FILE
exists, so a test can look at the run while it is still running.
"""

import argparse
import math
import os
import time


def arguments():
    parser = argparse.ArgumentParser()
    parser.add_argument("--lr", type=float, default=0.01)
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--plateau", type=int, default=0, help="val loss gets worse after this epoch (0: never)")
    parser.add_argument("--sleep", type=float, default=0.0)
    parser.add_argument("--gate", default="")
    parser.add_argument("--gate-after", type=int, default=0)
    parser.add_argument("--logdir", default="")
    parser.add_argument("--state", default="", help="a file holding the last epoch done (the program's checkpoint)")
    parser.add_argument("--resume", action="store_true", help="start after the epoch in --state")
    return parser.parse_args()


def first_epoch(args):
    """1, or the epoch after the one --state holds when resuming."""
    if args.resume and args.state and os.path.exists(args.state):
        with open(args.state) as f:
            return int(f.read().strip() or 0) + 1
    return 1


def done(args, epoch):
    """The epoch is done: the program's own checkpoint says so (atomically)."""
    if args.state:
        with open(args.state + ".tmp", "w") as f:
            f.write(str(epoch))
        os.replace(args.state + ".tmp", args.state)


def val_loss(args, epoch):
    base = abs(math.log10(args.lr) + 2) + 0.1
    if args.plateau and epoch > args.plateau:
        return base + 1.0 / args.plateau + 0.05 * (epoch - args.plateau)
    return base + 1.0 / epoch


def train_loss(args, epoch):
    return val_loss(args, epoch) * 0.9


def gate(args, epoch):
    """Called after the first line of `epoch`: wait for the gate file once the program is past --gate-after."""
    if args.gate and epoch == args.gate_after + 1:
        deadline = time.monotonic() + 120
        while not os.path.exists(args.gate) and time.monotonic() < deadline:
            time.sleep(0.02)
    if args.sleep:
        time.sleep(args.sleep)
