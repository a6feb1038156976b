"""Prints what the Hugging Face Trainer prints: a tqdm bar on stderr, and each log as a Python dict
(`tqdm.write(str(logs))`), its values quoted numbers as some versions print them."""

import sys

from common import arguments, gate, train_loss, val_loss

args = arguments()
steps_per_epoch = 4
total = steps_per_epoch * args.epochs
for step in range(1, total + 1):
    epoch = step / steps_per_epoch
    sys.stderr.write(f"\r {100 * step // total:3d}%|{'█' * (10 * step // total):<10}| {step}/{total} [00:01<00:03,  2.00it/s]")
    sys.stderr.flush()
    if step % 2 == 0:
        logs = {"loss": f"{train_loss(args, int(epoch + 0.99)):.4f}", "grad_norm": "1.23",
                "learning_rate": f"{args.lr * (1 - step / total):.4g}", "epoch": f"{round(epoch, 2)}"}
        sys.stderr.write("\r" + " " * 60 + "\r")  # tqdm.write: the bar is cleared, the line printed, the bar redrawn
        print(str(logs), flush=True)
        if step % steps_per_epoch == 2:
            gate(args, int(epoch) + 1)
    if step % steps_per_epoch == 0:
        logs = {"eval_loss": f"{val_loss(args, int(epoch)):.4f}", "eval_runtime": "0.0123",
                "eval_samples_per_second": "8130.1", "epoch": f"{float(epoch)}"}
        print(str(logs), flush=True)
sys.stderr.write("\n")
print(str({"train_runtime": "1.5", "train_samples_per_second": "100.0", "train_loss": "0.5", "epoch": f"{float(args.epochs)}"}))
