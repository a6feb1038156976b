"""Writes only TensorBoard event files, with torch.utils.tensorboard.SummaryWriter, and prints no metric."""

import os

from common import arguments, gate, train_loss, val_loss
from torch.utils.tensorboard import SummaryWriter

args = arguments()
writer = SummaryWriter(os.path.join(args.logdir or "runs", "exp"))
print("training, logging to TensorBoard")
for epoch in range(1, args.epochs + 1):
    writer.add_scalar("Loss/train", train_loss(args, epoch), epoch)
    writer.add_scalar("Loss/val", val_loss(args, epoch), epoch)
    writer.flush()
    gate(args, epoch + 1)
writer.close()
