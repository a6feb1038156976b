"""Prints what pytorch/examples word_language_model/main.py prints, at the same places (its own format calls)."""

import math
import sys

from common import arguments, gate, train_loss, val_loss

args = arguments()
print("Using device: cpu")
batches = 2983
for epoch in range(1, args.epochs + 1):
    for i, batch in enumerate(range(200, batches, 1400)):
        loss = train_loss(args, epoch) + 0.01 * i
        print(f'| epoch {epoch:3d} | {batch:5d}/{batches:5d} batches | lr {args.lr:02.2f} | ms/batch {45.67:5.2f} | '
              f'loss {loss:5.2f} | ppl {math.exp(loss):8.2f}')  # noqa: UP032
        if i == 0:
            sys.stdout.flush()
            gate(args, epoch)
    val = val_loss(args, epoch)
    print('-' * 89)
    print(f'| end of epoch {epoch:3d} | time: {1.23:5.2f}s | valid loss {val:5.3f} | '
          f'valid ppl {math.exp(val):8.2f}')  # noqa: UP032
    print('-' * 89)
print('=' * 89)
print('| End of training | test loss {:5.2f} | test ppl {:8.2f}'.format(1.0, math.exp(1.0)))  # noqa: UP032
print('=' * 89)
