"""Which runs may train together as one ensemble (training.ensemble): the one place that decides it.

Light (no torch): the engine's study driver, the worker and the ensemble trainer all ask here.
"""

from __future__ import annotations

import json


def ensemble_key(spec) -> tuple | None:
    """Specs with equal keys can train as one ensemble; None: this spec trains alone.

    Equal: the data block (dataset, fractions, batch size), the architecture
    (kind, hidden sizes, channels, activation), the optimiser's name (the state
    it keeps), the device and precision. Free per member: lr, momentum,
    nesterov, weight_decay, betas, l1, l2, dropout rates, seed, epochs, the
    schedule and early stopping (host-side objects, one per member).
    """
    m, t = spec.model, spec.train
    if spec.augment.active or m.batch_norm != "none" or t.compile:
        return None
    arch = (m.kind, tuple(m.hidden_sizes), tuple(m.channels) if m.kind == "cnn" else (), m.activation)
    data = json.dumps(spec.data.model_dump(mode="json"), sort_keys=True)
    return ("ensemble/1", data, arch, spec.optimizer.name, t.device, t.precision)
