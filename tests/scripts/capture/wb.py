"""Logs with the W&B API (nanoGPT's way: wandb.init(config=...), wandb.log({...}), wandb.finish()) and
prints no metric; no wandb is installed where it runs."""

import wandb
from common import arguments, gate, train_loss, val_loss

args = arguments()
run = wandb.init(project="owt", name="gpt2", config={"lr": args.lr, "epochs": args.epochs})
wandb.watch(None)  # unknown to the stand-in: one warning, and nothing else
for epoch in range(1, args.epochs + 1):
    wandb.log({"iter": epoch * 100, "train/loss": train_loss(args, epoch), "val/loss": val_loss(args, epoch),
               "lr": wandb.config.lr})
    gate(args, epoch + 1)
wandb.summary["best"] = 0.1
wandb.finish()
