"""Prints what Keras 3's Progbar prints in model.fit (verbose=1): an `Epoch N/M` line, then the bar
redrawn with backspaces and `\r`, in ANSI colours, ending with the epoch's losses."""

import sys

from common import arguments, done, first_epoch, gate, train_loss, val_loss

args = arguments()
out = sys.stdout
width = 0
for epoch in range(first_epoch(args), args.epochs + 1):
    out.write(f"Epoch {epoch}/{args.epochs}\n")
    for step in (1, 22, 44):
        loss = train_loss(args, epoch)
        bar = f"\x1b[1m{step:2d}/44\x1b[0m \x1b[32m{'━' * (step * 20 // 44)}\x1b[0m\x1b[37m{'━' * (20 - step * 20 // 44)}\x1b[0m"
        info = f" \x1b[1m0s\x1b[0m 12ms/step - loss: {loss:.4f}"
        if step == 44:
            info += f" - val_loss: {val_loss(args, epoch):.4f}"
        out.write("\b" * width + "\r" + bar + info + ("\n" if step == 44 else ""))
        out.flush()
        width = len(bar) + len(info)
        if step == 1:
            gate(args, epoch)
    done(args, epoch)
