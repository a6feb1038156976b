"""Where queued runs train: placement backends behind one abstract base (see base.py)."""
